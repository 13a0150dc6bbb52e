"""Shell completion of job ids and queue names, read from the store only when TAB asks.

During completion no command callback has run, so the store is found from the raw --store
option (else $JOBCTL_STORE, config, default). Only unfinished jobs are offered: they live in
the store's hot state, so a TAB costs the same at ten or a million stored jobs. A completion
never fails loudly: any error offers nothing.
"""

from typing import Any

from jobctl.cli.app import Session


def _store(ctx: Any) -> Any:
    root = ctx.find_root()
    return Session(root.params.get("store"), debug=False).store


def job_ids(ctx: Any, incomplete: str) -> list[tuple[str, str]]:
    try:
        from jobctl.cli.render import command_text
        from jobctl.model import UNFINISHED

        jobs = _store(ctx).query(states=UNFINISHED)
        return [(str(j.id), f"{j.state.value}: {command_text(j)[:50]}") for j in jobs if str(j.id).startswith(incomplete)]
    except Exception:
        return []


def queues(ctx: Any, incomplete: str) -> list[str]:
    try:
        from jobctl.model import UNFINISHED

        session = Session(ctx.find_root().params.get("store"), debug=False)
        names = {j.queue for j in session.store.query(states=UNFINISHED)} | {"default"}
        names |= set(session.config.queue_limits())
        return sorted(n for n in names if n.startswith(incomplete))
    except Exception:
        return []
