import subprocess
import sys
from dataclasses import dataclass

import pytest

from soraplan.core.cli import Command, run_command
from soraplan.core.config import ConfigError, PositiveInt


@dataclass
class EchoConfig:
    input: str = ""
    times: PositiveInt = 1
    address: str | None = None


def echo(cfg: EchoConfig, args) -> dict:
    if not cfg.input:
        raise ConfigError("set input (--input)")
    if cfg.input == "missing":
        raise FileNotFoundError("no such file: missing")
    return {"input": cfg.input, "times": cfg.times, "address": cfg.address}


def add_echo_arguments(parser) -> None:
    parser.add_argument("--input")
    parser.add_argument("--address")


COMMANDS = [Command("echo", "print the config", echo, EchoConfig, add_echo_arguments,
                    {"input": "input", "address": "address"})]


def run(argv, capsys):
    code = run_command("soraplan-test", "test tool", COMMANDS, argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_options_and_overrides_in_any_order(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("times: 2\n")
    code, out, _ = run(["echo", "times=3", "--config", str(cfg), "--input", "a", "--address", "auto"], capsys)
    assert code == 0 and '"times": 3' in out and '"input": "a"' in out and '"address": "auto"' in out
    # The deepspeed launcher puts --local_rank first.
    code, out, _ = run(["--local_rank=0", "echo", "--input", "b"], capsys)
    assert code == 0 and '"input": "b"' in out


@pytest.mark.parametrize("argv, message", [
    (["echo"], "soraplan-test echo: set input (--input)"),
    (["echo", "--input", "missing"], "soraplan-test echo: no such file: missing"),
    (["echo", "--input", "a", "times=0"], "times: 0 is out of range"),
    (["echo", "--input", "a", "colour=red"], "unknown config key(s) ['colour']"),
    (["echo", "--input", "a", "--config", "nowhere.yaml"], "config file not found: nowhere.yaml"),
])
def test_user_errors_are_one_line_and_exit_2(argv, message, capsys):
    code, out, err = run(argv, capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err, err


def test_bad_usage_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        run_command("soraplan-test", "test tool", COMMANDS, ["echo", "--nope"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        run_command("soraplan-test", "test tool", COMMANDS, ["unknown-command"])
    assert exc.value.code == 2


def test_no_traceback_from_a_real_process(tmp_path):
    script = tmp_path / "tool.py"
    script.write_text(
        "import sys\n"
        "from soraplan.core.cli import Command, console_main\n"
        "from soraplan.core.config import PositiveInt\n"
        "from dataclasses import dataclass\n"
        "@dataclass\nclass C:\n    n: PositiveInt = 1\n"
        "main = console_main('tool', 'd', [Command('go', 'h', lambda cfg, a: {'n': cfg.n}, C)])\n"
        "main()\n")
    done = subprocess.run([sys.executable, str(script), "go", "n=-1"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "n: -1 is out of range" in done.stderr


def test_a_script_with_one_job_has_no_command_word(capsys):
    code = run_command("soraplan-one", "one job", COMMANDS[0], ["--input", "a", "times=2"])
    out, _ = capsys.readouterr()
    assert code == 0 and '"times": 2' in out
    code = run_command("soraplan-one", "one job", COMMANDS[0], ["times=2"])
    _, err = capsys.readouterr()
    assert code == 2 and err == "soraplan-one: set input (--input)\n"
