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
        raise StoreError("PostgreSQL stores are not available in this version of jobctl")
    from jobctl.store.jsonfile import JsonStore

    root = Path(location).expanduser().absolute()
    return JsonStore(root, lock_timeout=config.get("lock_timeout"))
