"""What a newcomer's environment gets wrong is reported in one line: the renderer, the dataset folder, offline mode."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT, assert_one_line_error, run_main


def test_an_unusable_renderer_is_one_line_even_for_help():
    """MUJOCO_GL names a library that does not load here (no OSMesa on these machines): not a 32-line traceback."""
    env = {**os.environ, "MUJOCO_GL": "osmesa"}
    env.pop("PYOPENGL_PLATFORM", None)  # as in a fresh shell: MuJoCo set it to egl in this process when it loaded
    out = subprocess.run([sys.executable, str(ROOT / "iql_continuous.py"), "--help"], env=env, capture_output=True,
                         text=True, timeout=120)
    if out.returncode == 0:
        pytest.skip("OSMesa loads on this machine")
    assert_one_line_error(out, "with MUJOCO_GL=osmesa: set MUJOCO_GL=egl")


def test_an_empty_dataset_path_is_refused(minari_root, tmp_path, monkeypatch):
    import iql_continuous as iql

    monkeypatch.setenv("MINARI_DATASETS_PATH", "")  # would silently mean the current folder
    with pytest.raises(iql.UserError, match="MINARI_DATASETS_PATH is set but empty"):
        run_main("iql_continuous", tmp_path, "--env-id", "test/hopper/random-v0")


def test_a_mistyped_local_id_lists_the_datasets_there_without_trying_a_download(minari_root, tmp_path, capsys):
    import iql_continuous as iql

    assert os.environ["HF_HUB_OFFLINE"] == "1"  # conftest: offline, as a machine without network
    with pytest.raises(iql.UserError) as error:
        run_main("iql_continuous", tmp_path, "--env-id", "test/hopper/randm-v0")
    assert "Datasets in" in str(error.value) and "test/hopper/random-v0" in str(error.value)
    assert "minari download" not in str(error.value)
    assert "downloading" not in capsys.readouterr().out  # HF_HUB_OFFLINE skips the attempt, and says nothing of one
