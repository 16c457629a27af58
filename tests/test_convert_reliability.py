"""`jaxgen convert` when things go wrong: failed writes, bad options, SIGTERM, stale partials, umask modes.

Runs as root here, where chmod cannot make a folder unwritable, so most write failures are injected at the
system call that would fail (with the errno the kernel would give); the not-a-folder case is real.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

pytest.importorskip("transformers")

import checkpoints_convert  # noqa: E402
from checkpoints_convert import atomic, cli, convert  # noqa: E402
from checkpoints_convert import convert_checkpoint, is_converted, read_converted  # noqa: E402
from conftest import hf_checkpoint  # noqa: E402
from jaxgen.errors import CheckpointError  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(checkpoints_convert.__file__)))


@pytest.fixture(scope="module")
def src() -> str:
    return hf_checkpoint("llama_gqa")[0]


def listing(folder) -> list[str]:
    return sorted(os.listdir(folder))


def run_python(code: str, *args: str, **kwargs) -> subprocess.CompletedProcess | subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-c", textwrap.dedent(code), *args]
    if kwargs.pop("background", False):
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, **kwargs)


def assert_one_error_line(err: str, *needles: str) -> None:
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, err)


# ------------------------------------------------------------------------------------------- failed writes


def _fail_mkdtemp(monkeypatch, tmp_path):
    def mkdtemp(prefix="", dir=None, **kw):
        raise PermissionError(errno.EACCES, "Permission denied", os.path.join(dir, prefix + "abc"))

    monkeypatch.setattr(atomic.tempfile, "mkdtemp", mkdtemp)
    return tmp_path / "out", "permissions"


def _fail_makedirs(monkeypatch, tmp_path):
    def makedirs(path, *a, **kw):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "a"))

    monkeypatch.setattr(atomic.os, "makedirs", makedirs)
    return tmp_path / "a" / "b" / "out", "permissions"


def _disk_full(monkeypatch, tmp_path):
    real = convert._write_shard

    def write_shard(path, items, produce):
        real(path, items, produce)  # a real file is half the story: it must be removed too
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(convert, "_write_shard", write_shard)
    return tmp_path / "new" / "out", "disk is full"


def _read_only_fs(monkeypatch, tmp_path):
    def rename(a, b, **kw):
        raise OSError(errno.EROFS, "Read-only file system", a, b)

    monkeypatch.setattr(atomic.os, "rename", rename)
    return tmp_path / "out", "read-only"


def _parent_is_a_file(monkeypatch, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    return tmp_path / "file" / "out", "not a folder"


WRITE_FAILURES = {"permission_denied": _fail_mkdtemp, "parent_cannot_be_created": _fail_makedirs,
                  "disk_full": _disk_full, "read_only_fs": _read_only_fs, "parent_is_a_file": _parent_is_a_file}


@pytest.mark.parametrize("case", sorted(WRITE_FAILURES))
@pytest.mark.parametrize("quiet", [True, False])
def test_failed_write_is_one_error_line_and_leaves_nothing(src, tmp_path, monkeypatch, capsys, case, quiet):
    out, advice = WRITE_FAILURES[case](monkeypatch, tmp_path)
    before = listing(tmp_path)
    assert cli.main([src, str(out)] + (["--quiet"] if quiet else [])) == 2
    err = capsys.readouterr().err
    if not quiet:  # the progress bar is erased on failure; the error is the last line
        err = err.replace("\r", "\n").strip().splitlines()[-1]
    assert_one_error_line(err, str(out.parent if case == "parent_is_a_file" else out), advice)
    assert listing(tmp_path) == before  # no partial folder, no parents created for it
    with pytest.raises(CheckpointError, match=advice):  # the API raises the same error, not an OSError
        convert_checkpoint(src, out, progress=False)


def test_failed_write_in_a_fresh_process(src, tmp_path):
    (tmp_path / "file").write_text("x")
    proc = run_python("import sys; from checkpoints_convert.cli import main; sys.exit(main())",
                      src, str(tmp_path / "file" / "out"))
    assert proc.returncode == 2
    assert_one_error_line(proc.stderr, str(tmp_path / "file"))
    assert listing(tmp_path) == ["file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_parent_folder(src, tmp_path, capsys):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        assert cli.main([src, str(parent / "out"), "--quiet"]) == 2
        assert_one_error_line(capsys.readouterr().err, str(parent / "out"), "permissions")
        assert listing(parent) == []
    finally:
        parent.chmod(0o755)


# ------------------------------------------------------------------------------------------------- options


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1", "abc"])
def test_bad_max_shard_gib_is_an_argparse_error(src, tmp_path, capsys, value):
    with pytest.raises(SystemExit) as e:
        cli.main([src, str(tmp_path / "out"), f"--max-shard-gib={value}"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m checkpoints_convert")
    assert "argument --max-shard-gib: must be a positive number of GiB" in err and repr(value) in err
    assert listing(tmp_path) == []
    if value != "abc":  # the API refuses the same sizes
        with pytest.raises(ValueError, match="max_shard_bytes"):
            convert_checkpoint(src, tmp_path / "out", progress=False, max_shard_bytes=float(value))


def test_prog_names_the_command(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"], prog="jaxgen convert")
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("usage: jaxgen convert ")
    with pytest.raises(SystemExit):
        cli.main([])
    assert capsys.readouterr().err.startswith("usage: python -m checkpoints_convert ")


# ------------------------------------------------------------------------------------------------- SIGTERM

SLOW_CONVERT = """
    import sys, time
    from checkpoints_convert import cli, convert
    src, out, flag = sys.argv[1:]
    real = convert._write_shard

    def slow(path, items, produce):
        real(path, items, produce)
        open(flag, "w").close()  # a params file is on disk: now is mid-conversion
        time.sleep(60)

    convert._write_shard = slow
    sys.exit(cli.main([src, out, "--quiet", "--max-shard-gib", "0.0001"]))
"""


def test_sigterm_midway_leaves_nothing(src, tmp_path):
    parent, flag = tmp_path / "parent", tmp_path / "started"
    parent.mkdir()
    proc = run_python(SLOW_CONVERT, src, str(parent / "out"), str(flag), background=True)
    try:
        deadline = time.monotonic() + 90
        while not flag.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the conversion never started writing"
            time.sleep(0.05)
        assert any(".partial-" in n for n in os.listdir(parent))  # the partial exists before the signal
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM
    assert_one_error_line(err, "terminated; nothing was written")
    assert listing(parent) == []


def test_sigterm_in_process_raises_cleans_up_and_restores_the_handler(src, tmp_path, monkeypatch):
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda *a: seen.append("old handler"))
    real = convert._write_shard

    def write_shard(path, items, produce):
        real(path, items, produce)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises within this sleep

    try:
        monkeypatch.setattr(convert, "_write_shard", write_shard)
        with pytest.raises(atomic.Terminated) as e:
            convert_checkpoint(src, tmp_path / "out", progress=False)
        assert e.value.code == 143 and listing(tmp_path) == []
        os.kill(os.getpid(), signal.SIGTERM)  # the old handler is back
        assert seen == ["old handler"]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_conversion_in_a_thread_leaves_signals_alone(src, tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    errors = []
    worker = threading.Thread(target=lambda: errors.extend(
        [None] if convert_checkpoint(src, tmp_path / "out", progress=False) else ["failed"]))
    worker.start()
    worker.join(60)
    assert errors == [None] and is_converted(tmp_path / "out")
    assert signal.getsignal(signal.SIGTERM) is before


# ---------------------------------------------------------------------------------------- stale partials


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_partials_of_the_same_target_are_removed(src, tmp_path, capsys):
    tag = atomic._host_tag()
    dead = dead_pid()
    stale = tmp_path / f".out.partial-{dead}-{tag}-xyz"
    keep = [tmp_path / f".out.partial-{os.getppid()}-{tag}-live",  # its writer is still running
            tmp_path / f".other.partial-{dead}-{tag}-xyz",  # another target
            tmp_path / f".out.partial-{dead}-{'0' * 8 if tag != '0' * 8 else '1' * 8}-xyz"]  # another host
    for folder in [stale, *keep]:
        folder.mkdir()
        (folder / "params-00001-of-00002.safetensors").write_bytes(b"junk")
    assert stale.name.startswith(atomic.partial_prefix("out").replace(str(os.getpid()), str(dead)))

    assert cli.main([src, str(tmp_path / "out")]) == 0
    assert f"removed {stale}" in capsys.readouterr().err
    assert not stale.exists() and all(k.exists() for k in keep)
    assert read_converted(tmp_path / "out")[1]


# ------------------------------------------------------------------------------------------------- umask

UMASK_SCRIPT = """
    import json, os, stat, sys
    from checkpoints_convert import convert_checkpoint, load_hf_params
    from checkpoints_convert.atomic import current_umask
    from checkpoints_convert.export import save_hf_safetensors
    src, parent = sys.argv[1:]
    modes = {}
    for mask in (0o022, 0o027, 0o002):
        os.umask(mask)
        assert current_umask() == mask and current_umask() == mask  # reading it leaves it as it was
        out = os.path.join(parent, f"out-{mask:o}")
        convert_checkpoint(src, out, progress=False)
        config, params = load_hf_params(src)
        save_hf_safetensors(os.path.join(parent, f"export-{mask:o}.safetensors"), config, params)
        modes[mask] = {"dir": stat.S_IMODE(os.stat(out).st_mode),
                       "files": sorted({stat.S_IMODE(os.stat(os.path.join(out, f)).st_mode) for f in os.listdir(out)}),
                       "export": stat.S_IMODE(os.stat(os.path.join(parent, f"export-{mask:o}.safetensors")).st_mode)}
    print(json.dumps(modes))
"""


def test_outputs_honour_the_umask(src, tmp_path):
    proc = run_python(UMASK_SCRIPT, src, str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    modes = {int(k): v for k, v in json.loads(proc.stdout).items()}
    assert modes[0o022] == {"dir": 0o755, "files": [0o644], "export": 0o644}
    for mask, got in modes.items():
        assert got == {"dir": 0o777 & ~mask, "files": [0o666 & ~mask], "export": 0o666 & ~mask}, oct(mask)
    assert not any(".partial-" in n for n in os.listdir(tmp_path))
