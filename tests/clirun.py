"""Run the real `mmssl` CLI (in a subprocess, or in this process for quick refusals) and check the outcome of a
user error or a fault."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from helpers import PYTHON, ROOT


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["HF_HUB_OFFLINE"] = "1"
    env.update(extra)
    return env


def mmssl(*args: str, env: dict | None = None, timeout: float = 300, cwd: Path | str = ROOT,
          prefix: list[str] | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    """`mmssl ARGS` (as `python -m mmssl`), optionally behind `prefix` (e.g. ["unshare", "-n"])."""
    return subprocess.run([*(prefix or []), PYTHON, "-m", "mmssl", *args], env=env or cli_env(), cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, input=stdin)


def mmssl_here(*args: str, cwd: Path | str | None = None) -> subprocess.CompletedProcess:
    """`mmssl ARGS` through the same `main` the console script calls, in this process: for refusals and other quick
    commands, where a new interpreter would only add its start-up (about 5 s). Output and exit status as `mmssl`."""
    import contextlib
    import io

    from mmssl.commands import main

    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse's usage errors
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(["mmssl", *args], code, out.getvalue(), err.getvalue())


def assert_clear_error(done: subprocess.CompletedProcess, *needles: str) -> str:
    """A refusal: non-zero exit, no traceback, one `mmssl: error:` line that contains every needle."""
    output = done.stdout + done.stderr
    assert done.returncode != 0, f"expected a refusal, got exit 0:\n{output[-3000:]}"
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("mmssl: error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
    return errors[0]


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file below `root` (or of `root` itself), to prove nothing was changed or deleted."""
    root = Path(root)
    if root.is_file():
        return {root.name: hashlib.sha256(root.read_bytes()).hexdigest()}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def write_recipe(path: Path, raw: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def in_mount_namespace(script: str) -> list[str]:
    """A prefix that runs the command after `script` (mounts) in a private mount namespace (root, as in CI)."""
    return ["unshare", "-m", "sh", "-c", script + ' && exec "$@"', "sh"]


def train_killed_after(recipe: Path, output_dir: Path, step: int, timeout: float = 240) -> int:
    """Start `mmssl train RECIPE output_dir=...`, SIGKILL it once checkpoint `step` exists, and return the step of
    the last complete checkpoint it left (the run must still be running when killed)."""
    import signal
    import time

    from mmssl.train.checkpoints import final_dir, list_checkpoints

    proc = subprocess.Popen([PYTHON, "-m", "mmssl", "train", str(recipe), f"output_dir={output_dir}"],
                            env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not final_dir(output_dir, step).exists():
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return int(list_checkpoints(output_dir)[-1].name.split("-")[1])


def straight_and_resumed(recipe: Path, root: Path, kill_at: int, final: int) -> tuple[dict, dict, int]:
    """Train `recipe` once unbroken and once killed after checkpoint `kill_at` then resumed; return both runs'
    weights at step `final` (safetensors dicts) and the step the killed run resumed from."""
    from safetensors.torch import load_file

    from mmssl.train.checkpoints import final_dir

    straight, broken = root / "straight", root / "broken"
    done = mmssl("train", str(recipe), f"output_dir={straight}")
    assert done.returncode == 0, done.stderr[-2000:]
    killed_at = train_killed_after(recipe, broken, kill_at)
    assert kill_at <= killed_at < final
    done = mmssl("train", str(recipe), f"output_dir={broken}", "train.resume_from=latest")
    assert done.returncode == 0, done.stderr[-2000:]
    weights = [load_file(str(final_dir(run, final) / "model.safetensors")) for run in (straight, broken)]
    return weights[0], weights[1], killed_at


class _Stopped(Exception):
    """Raised by `straight_and_resumed_here` right after the checkpoint it stops a run at."""


def straight_and_resumed_here(raw: dict, root: Path, stop_at: int, final: int) -> tuple[dict, dict, int]:
    """`straight_and_resumed` in this process: the broken run dies by an exception right after writing checkpoint
    `stop_at` (instead of a SIGKILL) and resumes from it. What a method must carry in its checkpoint is tested the
    same way at a fifth of the cost (no three interpreters); the kill itself is tested once, in tests/reliability."""
    from safetensors.torch import load_file

    from mmssl.recipes import parse_recipe
    from mmssl.train.checkpoints import final_dir
    from mmssl.train.loop import Run, train

    straight, broken = root / "straight", root / "broken"
    train(parse_recipe({**raw, "output_dir": str(straight)}))
    save = Run.save_checkpoint

    def save_then_stop(run: Run) -> None:
        save(run)
        if run.state.step == stop_at:
            raise _Stopped

    Run.save_checkpoint = save_then_stop  # type: ignore[method-assign]
    try:
        train(parse_recipe({**raw, "output_dir": str(broken)}))
        raise AssertionError(f"the run ended before step {stop_at}")
    except _Stopped:
        pass
    finally:
        Run.save_checkpoint = save  # type: ignore[method-assign]
    assert not final_dir(broken, final).exists()
    resumed = {**raw, "output_dir": str(broken), "train": {**raw.get("train", {}), "resume_from": "latest"}}
    train(parse_recipe(resumed))
    weights = [load_file(str(final_dir(run, final) / "model.safetensors")) for run in (straight, broken)]
    return weights[0], weights[1], stop_at
