import json
import os

import pytest

from lavla.data_service import atomic
from lavla.data_service.atomic import atomic_write, atomic_write_json


@pytest.mark.parametrize("durable", [True, False])
def test_writes_replace_and_leave_no_temporaries(tmp_path, durable):
    path = tmp_path / "sub" / "state.json"
    atomic_write_json(path, {"step": 1}, durable=durable)
    atomic_write(path, b'{"step": 2}', durable=durable)
    assert json.loads(path.read_text()) == {"step": 2}
    assert os.listdir(path.parent) == ["state.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path, monkeypatch):
    path = tmp_path / "latest"
    atomic_write(path, "step_00000004")

    def crash(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(atomic.os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write(path, "step_00000008")
    assert path.read_text() == "step_00000004"
    assert os.listdir(tmp_path) == ["latest"]


def test_durable_writes_fsync_the_file_and_its_directory(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    atomic_write(tmp_path / "a", "x")
    assert len(synced) == 2
    synced.clear()
    atomic_write(tmp_path / "b", "x", durable=False)
    assert synced == []
