"""Tests for runs that outlive a session (chapter 07): the deadline, SIGTERM/SIGINT, the one-trainer lock, `training_finished`,
and checkpoints written before these existed."""
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import asdict, replace

import pandas as pd
import pytest
import torch

from iaf_repro.train import (TrainingInterrupted, load_checkpoint, run_progress, save_checkpoint, train, training_finished)
from iaf_repro.testing import SignalsItself, Slow
from test_train import CONFIG, metrics_without_time, tiny_data, tiny_model

OLD_RUN_KEYS = {"epoch", "steps", "best_vlb", "best_epoch", "since_best", "stopped", "rows"}
OLD_CHECKPOINT_KEYS = {"format", "config", "device_type", "model", "ema", "optimizer", "scheduler", "rng", "run"}
OLD_CONFIG_FIELDS = {"epochs", "batch_size", "lr", "betas", "ema_decay", "free_bits", "lr_factor", "lr_patience",
                     "early_stop_patience", "seed", "max_steps_per_epoch", "valid_images", "amp", "compile"}


def test_a_checkpoint_written_before_deadlines_existed_resumes_exactly(tmp_path):
    "The checkpoint format is unchanged: a file holding exactly the old keys (as the code before this chapter wrote it) resumes."
    data = tiny_data()
    straight = train(tiny_model(0), data, CONFIG, tmp_path / "straight", progress=False)
    train(tiny_model(0), data, replace(CONFIG, epochs=1), tmp_path / "old", progress=False)
    path = tmp_path / "old" / "checkpoint.pt"
    state = load_checkpoint(path)
    assert set(state) == OLD_CHECKPOINT_KEYS and set(state["run"]) == OLD_RUN_KEYS and set(state["config"]) == OLD_CONFIG_FIELDS
    old = {k: state[k] for k in OLD_CHECKPOINT_KEYS}
    old["run"] = {k: state["run"][k] for k in OLD_RUN_KEYS}
    old["config"] = {k: v for k, v in asdict(replace(CONFIG, epochs=1)).items() if k in OLD_CONFIG_FIELDS}
    save_checkpoint(old, path)
    assert run_progress(tmp_path / "old")["finished"]                            # 1 of 1 epochs
    resumed = train(tiny_model(7), data, CONFIG, tmp_path / "old", progress=False, deadline=time.time() + 600)
    pd.testing.assert_frame_equal(resumed.drop(columns="seconds"), straight.drop(columns="seconds"), check_exact=True)


def test_a_past_deadline_stops_before_an_epoch_and_the_run_is_not_finished(tmp_path):
    data = tiny_data()
    with pytest.raises(TrainingInterrupted, match="deadline") as stop:
        train(tiny_model(0), data, CONFIG, tmp_path, progress=False, deadline=time.time() - 1)
    assert stop.value.epoch == 0 and not (tmp_path / "checkpoint.pt").exists() and not training_finished(tmp_path)
    with pytest.raises(TrainingInterrupted, match="deadline") as stop:                 # epoch 1 starts (nothing to judge by),
        train(tiny_model(0), Slow(data, 0.05), CONFIG, tmp_path, progress=False, deadline=time.time() + 0.1)   # takes 0.2 s
    assert stop.value.epoch == 1 and run_progress(tmp_path)["epoch"] == 1 and not training_finished(tmp_path)
    assert len(train(tiny_model(0), data, CONFIG, tmp_path, progress=False)) == 2 and training_finished(tmp_path)


def test_the_deadline_is_judged_by_the_recent_epochs(tmp_path):
    "Epochs of about 0.2 s: one with 0.05 s left does not start; one with a minute left does."
    data = Slow(tiny_data(), 0.05)                                                   # 4 batches an epoch
    train(tiny_model(0), data, replace(CONFIG, epochs=1), tmp_path, progress=False)
    assert run_progress(tmp_path)["seconds"][0] >= 0.2
    with pytest.raises(TrainingInterrupted, match=r"deadline: 0.0 min left, an epoch takes about 0.0 min"):
        train(tiny_model(0), data, CONFIG, tmp_path, progress=False, deadline=time.time() + 0.05)
    assert len(train(tiny_model(0), data, CONFIG, tmp_path, progress=False, deadline=time.time() + 60)) == 2
    assert training_finished(tmp_path)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_epoch_stops_at_the_next_step_and_restores_the_handler(tmp_path, signum):
    data = tiny_data()
    straight = train(tiny_model(0), data, replace(CONFIG, epochs=3), tmp_path / "straight", progress=False)
    before = signal.getsignal(signum)
    with pytest.raises(TrainingInterrupted, match=signal.Signals(signum).name) as stop:
        train(tiny_model(0), SignalsItself(data, after=6, signum=signum), replace(CONFIG, epochs=3), tmp_path / "run", progress=False)
    assert stop.value.epoch == 1 and run_progress(tmp_path / "run")["epoch"] == 1          # epoch 2 was dropped
    assert signal.getsignal(signum) is before
    assert len(pd.read_csv(tmp_path / "run" / "metrics.csv")) == 1
    resumed = train(tiny_model(9), data, replace(CONFIG, epochs=3), tmp_path / "run", progress=False)
    pd.testing.assert_frame_equal(resumed.drop(columns="seconds"), straight.drop(columns="seconds"), check_exact=True)


CHILD = textwrap.dedent("""
    import sys, time
    from dataclasses import replace
    from iaf_repro.train import TrainingInterrupted, train
    from test_train import CONFIG, tiny_data, tiny_model
    from iaf_repro.testing import Slow
    try: train(tiny_model(0), Slow(tiny_data(), 0.05), replace(CONFIG, epochs=1000), sys.argv[1], progress=False)
    except TrainingInterrupted as e:
        print(e); sys.exit(e.exit_status)
""")


def test_sigterm_to_a_training_process_then_resume_equals_a_straight_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "run")], env=env, stdout=subprocess.PIPE, text=True)
    start = time.time()
    while not (tmp_path / "run" / "metrics.csv").exists():
        assert child.poll() is None and time.time() - start < 120, "the child did not finish an epoch"
        time.sleep(0.05)
    time.sleep(0.1)                                                                     # into the next epoch (0.2 s each)
    child.send_signal(signal.SIGTERM)
    out, _ = child.communicate(timeout=60)
    assert child.returncode == TrainingInterrupted.exit_status and "SIGTERM" in out, out
    saved = run_progress(tmp_path / "run")["epoch"]
    assert saved >= 1 and not training_finished(tmp_path / "run")
    config = replace(CONFIG, epochs=saved + 2)                                      # epochs is a field a resume may change
    straight = train(tiny_model(0), tiny_data(), config, tmp_path / "straight", progress=False)
    resumed = train(tiny_model(3), tiny_data(), config, tmp_path / "run", progress=False)
    pd.testing.assert_frame_equal(resumed.drop(columns="seconds"), straight.drop(columns="seconds"), check_exact=True)


def test_handlers_are_left_alone_outside_the_main_thread(tmp_path):
    before, done = signal.getsignal(signal.SIGTERM), []
    worker = threading.Thread(target=lambda: done.append(len(train(tiny_model(0), tiny_data(), CONFIG, tmp_path, progress=False))))
    worker.start(); worker.join()
    assert done == [2] and signal.getsignal(signal.SIGTERM) is before


def test_a_second_trainer_of_the_same_run_is_refused(tmp_path):
    "A process that holds the run (here: a thread inside the first training) makes a second `train` stop with a clear error."
    errors = []

    class SecondTrainer(Slow):
        def batches(self, *args, **kwargs):
            try: train(tiny_model(0), tiny_data(), CONFIG, tmp_path, progress=False)
            except RuntimeError as e: errors.append(str(e))
            yield from self.data.batches(*args, **kwargs)
    train(tiny_model(0), SecondTrainer(tiny_data(), 0), replace(CONFIG, epochs=1), tmp_path, progress=False)
    assert errors and "another process is training" in errors[0]
