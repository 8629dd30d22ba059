"""Restart reports: what a membership change cost, from the old group's heartbeat."""

from __future__ import annotations

from pathlib import Path

from lavla.trainer.membership import Heartbeat, LastProgress, RestartReport, read_last_progress


def test_heartbeat_round_trip_and_only_rank0_writes(tmp_path: Path) -> None:
    assert read_last_progress(tmp_path) is None
    Heartbeat(tmp_path, 4, enabled=False).beat(3, now=10.0)
    assert read_last_progress(tmp_path) is None
    beat = Heartbeat(tmp_path, 4, enabled=True)
    beat.beat(3, now=10.0)
    beat.beat(7, now=12.5)
    assert read_last_progress(tmp_path) == LastProgress(step=7, time=12.5, world_size=4)
    assert [p.name for p in tmp_path.iterdir()] == ["heartbeat.json"]  # no temp files left


def test_a_hand_edited_heartbeat_is_ignored_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "heartbeat.json").write_text("{not json")
    assert read_last_progress(tmp_path) is None


def test_restart_report_counts_replay_and_time_lost() -> None:
    # The old group (4 ranks) completed step 7 at t=100; the checkpoint was step 4; the new
    # group (2 ranks) completes step 5 at t=130, 6 at 131, 7 at 132 and 8 at 133 (1 s steps).
    report = RestartReport(LastProgress(step=7, time=100.0, world_size=4), resumed_step=4, world_size=2)
    assert report.resized and report.steps_replayed == 3
    assert report.step_done(5, 1.0, now=130.0) is None
    assert report.step_done(6, 1.0, now=131.0) is None
    assert report.step_done(7, 1.0, now=132.0) is None
    event = report.step_done(8, 1.0, now=133.0)
    assert event == {"resize/time": 133.0, "resize/old_world_size": 4, "resize/new_world_size": 2,
                     "resize/resumed_from_step": 4, "resize/steps_replayed": 3, "resize/downtime_s": 30.0,
                     "resize/seconds_lost": 32.0}
    assert report.step_done(9, 1.0, now=134.0) is None  # reported once


def test_a_restart_with_nothing_to_replay_reports_at_its_first_step() -> None:
    report = RestartReport(LastProgress(step=12, time=50.0, world_size=2), resumed_step=12, world_size=2)
    assert not report.resized and report.steps_replayed == 0
    event = report.step_done(13, 2.0, now=70.0)
    assert event is not None and event["resize/downtime_s"] == 20.0 and event["resize/seconds_lost"] == 18.0
