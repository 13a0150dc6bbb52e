"""Choosing and opening a store: `--store` > `JOBCTL_STORE` > config `store` > the default."""

from __future__ import annotations

import os
from pathlib import Path

from jobctl.config import Config
from jobctl.errors import StoreError
from jobctl.store.base import Store


def resolve_location(flag: str | None, config: Config) -> str:
    if flag:
        return flag
    env = os.environ.get("JOBCTL_STORE")
    if env:
        return env
    configured = config.get("store")
    if configured:
        return str(configured)
    import platformdirs

    return platformdirs.user_data_dir("jobctl")


def open_store(location: str, config: Config) -> Store:
    if location.startswith(("postgresql://", "postgres://")):
        from jobctl.store.postgres import PostgresStore

        output_root = config.get("output_root")
        if not output_root:
            raise StoreError("a PostgreSQL store needs config output_root: a directory all workers share "
                             "(jobctl config set output_root /shared/jobctl)")
        root = Path(output_root).expanduser().absolute()
        return PostgresStore(location, output_root=root, worker_timeout=config.get("worker_timeout"))
    from jobctl.store.jsonfile import JsonStore

    root = Path(location).expanduser().absolute()
    return JsonStore(root, lock_timeout=config.get("lock_timeout"))
