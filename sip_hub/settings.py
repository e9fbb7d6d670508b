"""Typed settings, read once from ``SIP_HUB_*`` environment variables and passed in."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATA_DIR = Path("var")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SIP_HUB_", extra="ignore")

    env: Literal["dev", "test", "production"] = "dev"
    # Empty means the embedded default: SQLite under data_dir.
    database_url: str = ""
    broker_url: str = "memory://"
    data_dir: Path = DEFAULT_DATA_DIR
    mappings_dir: Path = Path("mappings")
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    # Public base URL used in Location headers, Bundle links and fullUrls.
    base_url: str = ""
    auto_migrate: bool = True
    max_body_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)
    default_page_size: int = Field(default=50, ge=1, le=1000)
    max_page_size: int = Field(default=1000, ge=1)
    db_pool_size: int = Field(default=10, ge=1)

    @model_validator(mode="after")
    def _fill_database_url(self) -> "Settings":
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / 'sip_hub.sqlite3').as_posix()}"
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
