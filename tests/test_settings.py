"""DearDiarySettings: DEARDIARY_* variables, .env, defaults, errors that name their source."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from deardiary_lightning.settings import (
    DearDiarySettings,
    DearDiarySettingsError,
    parse_checkpoint_mode,
)


@pytest.fixture(autouse=True)
def _clean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("DEARDIARY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults_need_no_configuration():
    settings = DearDiarySettings()
    assert settings.url is None and settings.username is None
    assert settings.password is None and settings.token is None
    assert (settings.project, settings.experiment) == ("default", "default")
    assert settings.store == "./deardiary"
    assert settings.log_checkpoints is False and settings.iteration_id is None
    assert settings.sender_process is True


def test_environment_then_dotenv_then_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / ".env").write_text(
        "DEARDIARY_URL=http://server:9000\n"
        "DEARDIARY_PROJECT=from-dotenv\n"
        "DEARDIARY_EXPERIMENT=from-dotenv\n"
        "DEARDIARY_LOG_CHECKPOINTS=all\n"
        "DEARDIARY_ITERATION_ID=42\n"
        "DEARDIARY_SENDER_PROCESS=false\n"
    )
    monkeypatch.setenv("DEARDIARY_EXPERIMENT", "from-env")
    monkeypatch.setenv("deardiary_username", "alice")
    monkeypatch.setenv("DEARDIARY_PASSWORD", "hunter2")

    settings = DearDiarySettings(project="from-argument")
    assert settings.url == "http://server:9000"
    assert settings.project == "from-argument"
    assert settings.experiment == "from-env"
    assert settings.username == "alice"
    assert isinstance(settings.password, SecretStr)
    assert settings.password_value() == "hunter2"
    assert settings.log_checkpoints == "all"
    assert settings.iteration_id == 42
    assert settings.sender_process is False
    assert DearDiarySettings(iteration_id="a1b2-c3").iteration_id == "a1b2-c3"


def test_secrets_never_show(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DEARDIARY_PASSWORD", "hunter2")
    monkeypatch.setenv("DEARDIARY_TOKEN", "tok-123")
    monkeypatch.setenv("DEARDIARY_URL", "https://alice:pw-in-url@server/")
    settings = DearDiarySettings()
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert "hunter2" not in text and "tok-123" not in text
    assert "pw-in-url" not in repr(settings) and "alice:***@server" in repr(settings)
    assert settings.token_value() == "tok-123"


@pytest.mark.parametrize(
    ("text", "mode"),
    [("true", True), ("1", True), ("False", False), ("0", False), ("ALL", "all"), ("", False)],
)
def test_checkpoint_modes(text: str, mode: object, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DEARDIARY_LOG_CHECKPOINTS", text)
    assert DearDiarySettings().log_checkpoints == mode
    assert parse_checkpoint_mode(text) == mode


def test_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DEARDIARY_LOG_CHECKPOINTS", "sometimes")
    with pytest.raises(DearDiarySettingsError) as caught:
        DearDiarySettings()
    message = str(caught.value)
    assert "'log_checkpoints'" in message
    assert "environment variable DEARDIARY_LOG_CHECKPOINTS" in message
    assert "'sometimes'" in message and "use false" in message
    assert isinstance(caught.value, ValueError)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_bad_dotenv_value_names_the_file(tmp_path: Path):
    (tmp_path / ".env").write_text("DEARDIARY_PROJECT=\n")
    with pytest.raises(DearDiarySettingsError) as caught:
        DearDiarySettings()
    assert "'project'" in str(caught.value)
    assert f"DEARDIARY_PROJECT in {tmp_path / '.env'}" in str(caught.value)


def test_bad_argument_names_the_argument():
    with pytest.raises(DearDiarySettingsError, match="argument experiment"):
        DearDiarySettings(experiment="")


def test_a_bad_secret_is_never_quoted(monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(DearDiarySettingsError) as caught:
        DearDiarySettings(password=["hunter2"])
    assert "'password'" in str(caught.value) and "hunter2" not in str(caught.value)
