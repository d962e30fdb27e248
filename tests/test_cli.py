"""The CLI's contract: one `error:` line and exit 2 for user errors and missing extras, -q/-v on progress, the
comma-list parameter type, and the base install (no torch, transformers or onnx) running --help, models and run."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from halfv_export.cli import HalfvGroup, cli
from halfv_export.cli.options import CsvList, needs
from halfv_export.core import progress
from halfv_export.core.errors import UserError
from halfv_export.core.extras import EXTRAS, MissingExtra, extra_of, require

BASE_ONLY = ("torch", "transformers", "onnx", "onnxscript", "onnx_ir", "onnx_graphsurgeon", "polygraphy",
             "safetensors", "huggingface_hub", "matplotlib", "tritonclient", "pytriton", "halfv_zoo")

# A fresh interpreter in which the modules named in HALFV_HIDE cannot be imported (as if not installed),
# running `halfv-export ARGS...`; prints which of them got imported anyway on stdout's last line.
HIDDEN_RUN = """
import importlib.abc, os, sys
HIDDEN = set(os.environ["HALFV_HIDE"].split(","))
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, NotInstalled())
from halfv_export.cli import main
try:
    main(sys.argv[1:])
finally:
    print("imported:", sorted(m for m in sys.modules if m.split(".")[0] in HIDDEN))
"""


def run_without(hidden, *args, timeout=180):
    env = dict(os.environ, HALFV_HIDE=",".join(hidden))
    return subprocess.run([sys.executable, "-c", HIDDEN_RUN, *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def one_error_line(stderr: str) -> str:
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    return stderr.strip()


# -- errors -> exit 2 -----------------------------------------------------------------------------------
def group_with(body, extras=()):
    """A HalfvGroup with one command `probe` that runs body() (declaring `extras` as options.needs does)."""
    group = HalfvGroup("halfv-export")

    @group.command("probe")
    @needs(*extras)
    def probe():
        body()

    return group


def test_user_error_is_one_line_on_stderr_and_exit_2(tmp_path):
    result = CliRunner().invoke(cli, ["run", "--graphs", str(tmp_path / "none"), "--image", str(tmp_path / "x.png"),
                                      "--prompt", "?"])
    assert result.exit_code == 2
    one_error_line(result.stderr)
    assert result.stdout == ""


def test_a_bug_keeps_its_traceback():
    def bug():
        raise RuntimeError("a bug")

    def own_module_missing():
        raise ModuleNotFoundError("No module named 'halfv_export.nothing'", name="halfv_export.nothing")

    for body, kind in ((bug, RuntimeError), (own_module_missing, ModuleNotFoundError)):
        result = CliRunner().invoke(group_with(body), ["probe"])
        assert result.exit_code == 1 and isinstance(result.exception, kind)
        assert "error:" not in result.stderr


def test_a_stray_missing_module_names_its_extra():
    def plot():
        raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib.pyplot")

    result = CliRunner().invoke(group_with(plot), ["probe"])
    assert result.exit_code == 2
    assert one_error_line(result.stderr) == ("error: probe needs the 'plots' extra: "
                                             "pip install 'halfv-export[plots]'")


def test_the_commands_own_extra_wins_for_a_shared_module():
    def read():
        raise ModuleNotFoundError("No module named 'onnx'", name="onnx")

    assert "'export' extra" in CliRunner().invoke(group_with(read), ["probe"]).stderr
    assert "'lint' extra" in CliRunner().invoke(group_with(read, extras=("lint",)), ["probe"]).stderr


def test_require_and_extra_of():
    require("plots", "click")  # installed: nothing raised
    with pytest.raises(MissingExtra, match=r"this needs the 'export' extra: pip install 'halfv-export\[export\]'"):
        require("export", "no_such_module_here")
    assert str(MissingExtra("halfv-zoo", "halfv_zoo", "eval")).startswith("eval needs the 'halfv-zoo' package: ")
    assert issubclass(MissingExtra, UserError)
    assert extra_of("torch.nn") == "export" and extra_of("onnx", prefer=("lint",)) == "lint"
    assert extra_of("tritonclient.http") == "triton" and extra_of("numpy") is None
    assert set(EXTRAS) == {"export", "lint", "triton", "plots", "gpu"}


# -- the base install -----------------------------------------------------------------------------------
def test_export_without_the_extra_is_one_error_line(tmp_path):
    proc = run_without(BASE_ONLY, "export", "--model", "tiny-llava", "--out", str(tmp_path / "g"))
    assert proc.returncode == 2, proc.stderr
    assert one_error_line(proc.stderr) == ("error: export needs the 'export' extra: "
                                           "pip install 'halfv-export[export]'")
    assert proc.stdout.splitlines()[-1] == "imported: []"
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize("args, extra", [
    (["lint", "--graphs", "GRAPHS", "--target", "trt10"], "lint"),
    (["triton", "--graphs", "GRAPHS", "--out", "repo"], "triton"),
    (["zoo", "data", "shapes-llava", "--out", "data"], "halfv-zoo"),
])
def test_each_command_names_its_extra(tmp_path, args, extra):
    proc = run_without(BASE_ONLY, *(str(tmp_path) if a == "GRAPHS" else a for a in args))
    assert proc.returncode == 2, proc.stderr
    assert f"error: {' '.join(args[:2] if args[0] == 'zoo' else args[:1])} needs the '{extra}' " in proc.stderr
    one_error_line(proc.stderr)


def test_help_and_models_without_torch():
    proc = run_without(BASE_ONLY, "--help")
    assert proc.returncode == 0 and "models" in proc.stdout, proc.stderr
    proc = run_without(BASE_ONLY, "models")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:4] == ["name", "family", "layers", "hidden"]
    assert any(line.split()[:3] == ["tiny-llava", "llava", "6"] for line in lines)
    assert proc.stderr.count("\n") == 1 and "'export' extra" in proc.stderr  # a note of what is left out
    assert lines[-1] == "imported: []"


@pytest.mark.slow
def test_run_without_torch(tmp_path):
    from halfv_export.calibration.data import synthetic_image
    from tests.runtime.exported import exported_graphs

    image = tmp_path / "image.png"
    synthetic_image(1).save(image)
    proc = run_without(BASE_ONLY, "run", "--graphs", str(exported_graphs("tiny-llava")), "--image", str(image),
                       "--prompt", "What colour is the largest shape?", "--max-new-tokens", "3", "--stats")
    assert proc.returncode == 0, proc.stderr
    assert "visual tokens: 16 -> IVR 8 -> SSR 8" in proc.stdout
    assert proc.stdout.splitlines()[-1] == "imported: []"


# -- -q / -v -------------------------------------------------------------------------------------------
def test_quiet_silences_progress_and_verbose_adds_debug(tmp_path):
    runner = CliRunner()
    args = ["random-checkpoint", "--model", "tiny-llava", "--layers", "2", "--vision-depth", "1"]
    loud = runner.invoke(cli, [*args, "--out", str(tmp_path / "a")])
    quiet = runner.invoke(cli, ["-q", *args, "--out", str(tmp_path / "b")])
    assert loud.exit_code == 0 and quiet.exit_code == 0, loud.output + quiet.output
    assert "[random-checkpoint tiny-llava] done:" in loud.stderr
    assert quiet.stderr == "" and f"checkpoint: {tmp_path / 'b'}" in quiet.stdout  # the answer stays
    assert progress.LOGGER.level == logging.INFO  # one invocation's -q does not outlive it

    failing = runner.invoke(cli, ["-v", "run", "--graphs", str(tmp_path / "none"), "--image", "x", "--prompt", "?"])
    assert failing.exit_code == 2 and "Traceback" in failing.stderr  # -v: where the error was raised
    assert failing.stderr.splitlines()[-1].startswith("error: ")
    assert runner.invoke(cli, ["-v", "-q", "models"]).exit_code == 2


def test_step_and_say_follow_the_level(capsys):
    previous = progress.set_level(logging.WARNING)
    try:
        with progress.step("quiet step", total=3) as advance:
            advance(3)
        progress.say("not shown")
        progress.LOGGER.warning("shown")
    finally:
        progress.set_level(previous)
    progress.say("shown too")
    assert capsys.readouterr().err == "warning: shown\nshown too\n"


# -- CsvList -------------------------------------------------------------------------------------------
def test_csv_list_converts_each_item():
    assert CsvList(int, low=1).convert("576, 1024,,2048", None, None) == (576, 1024, 2048)
    assert CsvList(float, low=0, low_open=True, high=1).convert("0.5,.25", None, None) == (0.5, 0.25)
    assert CsvList(str).convert("vision, prefill", None, None) == ("vision", "prefill")
    assert CsvList(int, empty_ok=True).convert("", None, None) == ()
    assert CsvList(int).convert((1, 2), None, None) == (1, 2)  # already converted


@pytest.mark.parametrize("kind, value, message", [
    (CsvList(int, low=1), "16,x", "expected comma-separated integers, got '16,x'"),
    (CsvList(int, low=1), "0", "expected positive integers, got '0'"),
    (CsvList(int, low=1), ",", "expected one or more positive integers, got ','"),
    (CsvList(float, low=0, low_open=True, high=1), "0.5,2", "expected numbers in (0, 1], got '0.5,2'"),
    (CsvList(float, low=0, low_open=True, high=1), "0", "expected numbers in (0, 1], got '0'"),
    (CsvList(float), "1,nan?", "expected comma-separated numbers"),
])
def test_csv_list_refuses_the_whole_list(kind, value, message):
    with pytest.raises(click.BadParameter) as info:
        kind.convert(value, None, None)
    assert message in info.value.message


def test_csv_list_as_an_option():
    @click.command()
    @click.option("--n", type=CsvList(int, low=1), default="1,2")
    def show(n):
        click.echo(repr(n))

    assert CliRunner().invoke(show, []).stdout == "(1, 2)\n"
    assert CliRunner().invoke(show, ["--n", "3,4"]).stdout == "(3, 4)\n"
    bad = CliRunner().invoke(show, ["--n", "3,-4"])
    assert bad.exit_code == 2 and "expected positive integers" in bad.stderr
    assert "N,..." in CliRunner().invoke(show, ["--help"]).stdout
