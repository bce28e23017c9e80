"""Type stub of the compiled kernel (native/src/*.rs)."""

from typing import Any

def digest(*parts: str) -> str: ...
def format_utc(micros: int) -> str | None: ...
def parse_utc(text: str) -> int | None: ...
def encode_user_state(format: int, state: object) -> bytes | None: ...

class InputReader:
    def __init__(
        self,
        types: list[tuple[str, int, type, list[tuple[str, str]]]],
        max_id_chars: int,
        max_cents: int,
        min_at: int,
        max_at: int,
        max_tags: int,
    ) -> None: ...
    def read(self, raw: bytes) -> Any | None: ...

class StateReader:
    def __init__(
        self,
        format: int,
        user_state: tuple[type, list[str]],
        instance: tuple[type, list[str]],
        order: tuple[type, list[str]],
        slot: tuple[type, list[str]],
        mapping_proxy: type,
    ) -> None: ...
    def read(self, raw: bytes) -> Any | None: ...

class RecordWriter:
    def __init__(self, type_name: str, version: int, fields: list[tuple[str, str]]) -> None: ...
    def write(self, record: object) -> bytes | None: ...
