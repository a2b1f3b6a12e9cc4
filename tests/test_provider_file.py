"""The ``file`` provider: real temporary files, lines read back as a user would."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from bridge.errors import ConfigError, TransientError
from bridge.providers.base import Sms
from bridge.providers.file import FileProvider
from bridge.providers.registry import build_provider, validate

CLIENT = httpx.AsyncClient()  # required by every provider; the file provider never uses it


def make(settings: dict) -> FileProvider:
    return FileProvider.from_config("outbox", {"type": "file", **settings}, CLIENT)


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _a_file(directory: Path) -> Path:
    path = directory / "plain-file"
    path.write_text("x")
    return path


@pytest.fixture
def outbox(tmp_path: Path) -> Path:
    return tmp_path / "spool" / "deep" / "outbox.jsonl"


@pytest.fixture
async def provider(outbox: Path):
    provider = make({"path": str(outbox)})
    yield provider
    await provider.aclose()


class TestSend:
    async def test_one_line_with_every_field(self, provider: FileProvider, outbox: Path) -> None:
        """A single SMS becomes one JSON line carrying everything about it."""
        sms = Sms(to=("+33612121515",), text="Hello", sender="SHOP", low_cost=True, parts=1, reference="j42")
        receipt = await provider.send(sms)
        [line] = lines_of(outbox)
        assert datetime.fromisoformat(line.pop("time").replace("Z", "+00:00")).utcoffset().total_seconds() == 0
        assert line == {
            "provider": "outbox",
            "id": "file-j42",
            "to": "+33612121515",
            "sender": "SHOP",
            "text": "Hello",
            "low_cost": True,
            "unicode": False,
            "parts": 1,
            "reference": "j42",
        }
        assert receipt.message_ids == {"+33612121515": "file-j42"}

    async def test_batch_gives_one_line_per_number(self, provider: FileProvider, outbox: Path) -> None:
        """Every number of a batch gets its own line and its own message id."""
        numbers = tuple(f"+3361212{i:04d}" for i in range(50))
        receipt = await provider.send(Sms(to=numbers, text="bulk"))
        lines = lines_of(outbox)
        assert [line["to"] for line in lines] == list(numbers)
        assert set(receipt.message_ids) == set(numbers)
        assert len(set(receipt.message_ids.values())) == 50
        assert all(line["id"] == receipt.message_ids[line["to"]] for line in lines)

    async def test_unicode_is_written_as_is(self, provider: FileProvider, outbox: Path) -> None:
        """Accents and emoji are stored as UTF-8, not as \\u escapes."""
        text = "Réunion à 9h ☕ 😀\nligne 2"
        await provider.send(Sms(to=("+33612121515",), text=text, unicode=True))
        raw = outbox.read_text(encoding="utf-8")
        assert "Réunion à 9h ☕ 😀" in raw and "\\u" not in raw
        assert raw.count("\n") == 1  # the newline inside the text is escaped in JSON
        assert lines_of(outbox)[0]["text"] == text

    async def test_appends_to_existing_content(self, provider: FileProvider, outbox: Path) -> None:
        """Existing lines are kept; new ones go after them."""
        outbox.parent.mkdir(parents=True)
        outbox.write_text('{"old": true}\n', encoding="utf-8")
        await provider.send(Sms(to=("+33600000001",), text="one"))
        await provider.send(Sms(to=("+33600000002",), text="two"))
        assert [line.get("text") for line in lines_of(outbox)] == [None, "one", "two"]

    async def test_concurrent_sends_never_interleave(self, provider: FileProvider, outbox: Path) -> None:
        """Many concurrent batches leave only whole, parseable lines."""
        batches = [Sms(to=(f"+336000000{i:02d}", f"+337000000{i:02d}"), text="x" * 500) for i in range(40)]
        await asyncio.gather(*(provider.send(sms) for sms in batches))
        assert len(lines_of(outbox)) == 80

    async def test_reopens_after_close(self, provider: FileProvider, outbox: Path) -> None:
        """``aclose()`` releases the file; the next send opens it again."""
        await provider.send(Sms(to=("+33600000001",), text="before"))
        await provider.aclose()
        await provider.aclose()  # twice is harmless
        await provider.send(Sms(to=("+33600000001",), text="after"))
        assert [line["text"] for line in lines_of(outbox)] == ["before", "after"]

    async def test_fsync_setting(self, tmp_path: Path) -> None:
        """With ``fsync: true`` the lines are written just the same."""
        path = tmp_path / "synced.jsonl"
        provider = make({"path": str(path), "fsync": True})
        assert provider.fsync is True
        await provider.send(Sms(to=("+33600000001",), text="synced"))
        await provider.aclose()
        assert lines_of(path)[0]["text"] == "synced"

    @pytest.mark.parametrize(
        "make_bad_path",
        [
            pytest.param(lambda tmp: tmp, id="path-is-a-directory"),
            pytest.param(lambda tmp: _a_file(tmp) / "out.jsonl", id="parent-is-a-file"),
        ],
    )
    async def test_os_error_is_transient(self, tmp_path: Path, make_bad_path) -> None:
        """A file that cannot be written is a TransientError (the disk may come back)."""
        provider = make({"path": str(make_bad_path(tmp_path))})
        with pytest.raises(TransientError) as caught:
            await provider.send(Sms(to=("+33600000001",), text="x"))
        assert caught.value.provider == "outbox"
        await provider.aclose()


class TestConfig:
    @pytest.mark.parametrize(
        ("settings", "path"),
        [
            pytest.param({}, "providers.outbox.path", id="path-missing"),
            pytest.param({"path": ""}, "providers.outbox.path", id="path-empty"),
            pytest.param({"path": 3}, "providers.outbox.path", id="path-not-a-string"),
            pytest.param({"path": "o.jsonl", "fsync": "yes"}, "providers.outbox.fsync", id="fsync-not-bool"),
            pytest.param({"path": "o.jsonl", "fsyn": True}, "providers.outbox.fsyn", id="unknown-key"),
        ],
    )
    def test_bad_values_name_their_key(self, settings: dict, path: str) -> None:
        """A bad value raises ConfigError naming ``providers.<name>.<key>``."""
        with pytest.raises(ConfigError) as caught:
            validate("outbox", {"type": "file", **settings})
        assert caught.value.path == path

    def test_registry_builds_it(self, tmp_path: Path) -> None:
        """``type: file`` resolves to FileProvider with its defaults."""
        provider = build_provider("outbox", {"type": "file", "path": str(tmp_path / "o.jsonl")}, CLIENT)
        assert isinstance(provider, FileProvider)
        assert (provider.fsync, provider.capabilities.max_numbers) == (False, 500)


class TestReconcile:
    async def test_reference_found_or_not(self, provider: FileProvider, outbox: Path) -> None:
        """A line with the reference is sent; none (or no file yet) is not_found."""
        sms = Sms(to=("+33600000001",), text="x", reference="m2s-3-1")
        assert await provider.reconcile(sms, 0.0, None) == ("not_found", None)
        await provider.send(sms)
        assert await provider.reconcile(sms, 0.0, None) == ("sent", "file-m2s-3-1")
        other = Sms(to=("+33600000001",), text="x", reference="m2s-4-1")
        assert await provider.reconcile(other, 0.0, None) == ("not_found", None)


async def test_check_says_where_it_writes(tmp_path):
    """`providers check` on a file provider proves the file can be appended to."""
    from bridge.providers.file import FileProvider

    provider = make({"path": str(tmp_path / "d" / "o.jsonl")})
    assert "o.jsonl" in await provider.check()
    assert (tmp_path / "d" / "o.jsonl").exists()
