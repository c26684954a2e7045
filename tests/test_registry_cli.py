"""``inferstream models ...`` on a pipeline's store: register what an application
ships, move an alias and roll it back, list, history; errors say what to do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inferstream.apps.eggs import APP
from inferstream.cli import main


def test_the_models_commands_register_move_roll_back_and_tell(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = ["--store", f"sqlite:///{tmp_path / 'r.db'}", "--blobs", f"file://{tmp_path}/b"]
    pipeline = str(APP.pipeline_path())
    assert main(["models", "list", pipeline, *where]) == 0
    assert "no models registered" in capsys.readouterr().out
    assert main(["models", "shipped", pipeline, *where]) == 0
    # Both versions the application ships; the alias at the one it serves by default.
    assert capsys.readouterr().out.splitlines() == [
        "egg_sexing 1.0.0: registered",
        "egg_sexing 1.0.0-int8: registered, @champion",
    ]
    assert main(["models", "shipped", pipeline, *where]) == 0  # again: nothing moves
    assert "@champion stays at 1.0.0-int8" in capsys.readouterr().out
    # A second version: the shipped files under another version number.
    folder = tmp_path / "v2"
    folder.mkdir()
    shipped = APP.models_dir / "egg_sexing"
    (folder / "egg_sexing.onnx").write_bytes(shipped.with_suffix(".onnx").read_bytes())
    info = json.loads(shipped.with_suffix(".json").read_text())
    (folder / "egg_sexing.json").write_text(json.dumps({**info, "version": "1.1.0"}))
    args = ["models", "register", pipeline, str(folder / "egg_sexing.onnx"), *where]
    assert main([*args, "--alias", "challenger", "--reason", "retrained"]) == 0
    assert "egg_sexing@challenger -> 1.1.0" in capsys.readouterr().out
    move = ["models", "alias", pipeline, "egg_sexing", "champion", "1.1.0", *where]
    assert main([*move, "--reason", "beats 1.0.0 on 400 labels"]) == 0
    assert main(["models", "rollback", pipeline, "egg_sexing", "champion", *where,
                 "--reason", "worse on tray 7"]) == 0  # fmt: skip
    assert "egg_sexing@champion -> 1.0.0-int8 (rolled back)" in capsys.readouterr().out
    assert main(["models", "list", pipeline, "--json", *where]) == 0
    listed = {v["version"]: v["aliases"] for v in json.loads(capsys.readouterr().out)}
    assert listed == {"1.0.0": [], "1.0.0-int8": ["champion"], "1.1.0": ["challenger"]}
    assert main(["models", "history", pipeline, "egg_sexing", *where]) == 0
    history = capsys.readouterr().out.splitlines()
    assert [line.split()[3] for line in history] == [
        "register", "register", "alias", "register", "alias", "alias", "rollback",
    ]  # fmt: skip
    assert history[-1].endswith(": worse on tray 7")
    assert "@champion 1.1.0 -> 1.0.0-int8" in history[-1]
    unknown = ["models", "alias", pipeline, "egg_sexing", "champion", "9.9.9", *where]
    assert main([*unknown, "--reason", "x"]) == 2
    assert (
        "has no version '9.9.9' (registered: 1.0.0, 1.0.0-int8, 1.1.0)" in capsys.readouterr().err
    )
