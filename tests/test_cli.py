"""launch.py as a person meets it: help with examples, and errors as messages with a non-zero exit."""

import subprocess
import sys

from tests.live_app import REPO


def run(*args, env=None):
    return subprocess.run([sys.executable, str(REPO / "launch.py"), *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120, env=env)


def test_help_lists_commands_and_examples():
    result = run("--help")
    assert result.returncode == 0
    assert "serve" in result.stdout and "examples:" in result.stdout
    serve = run("serve", "--help")
    assert serve.returncode == 0 and "--data-dir" in serve.stdout and "python launch.py serve --port" in serve.stdout


def test_bad_settings_are_reported_together_without_a_traceback(tmp_path):
    result = run("serve", "--port", "99999", "--host", "0.0.0.0", "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "--port 99999: must be at most 65535" in result.stderr
    assert "--admin-password" in result.stderr  # a public bind needs a password


def test_missing_base_model_folder_is_a_clear_error(tmp_path):
    result = run("serve", "--base-model", "./no-such-model", "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 2 and "no such folder" in result.stderr and "Traceback" not in result.stderr


def test_unknown_flag_is_a_usage_error():
    result = run("serve", "--nope")
    assert result.returncode == 2 and "unrecognized arguments" in result.stderr


def test_import_twice_says_how_many_rows_were_new_and_replaced(tmp_path):
    data = tmp_path / "faq.jsonl"
    data.write_text('{"instruction": "Q1?", "output": "A1."}\n{"instruction": "Q2?", "output": "A2."}\n')
    first = run("import", str(data), "--data-dir", str(tmp_path / "d"))
    assert first.returncode == 0 and "Imported 2 examples (#1–#2)" in first.stdout and "2 new, 0 replaced" in first.stdout
    second = run("import", str(data), "--data-dir", str(tmp_path / "d"))
    assert second.returncode == 0 and "0 new, 2 replaced an earlier example" in second.stdout, second.stdout


def test_expected_mistakes_print_one_line_not_a_traceback(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "Q?", "output": "A."}\n{"instruction": "Q?"}\n')
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for args, words in [
        (("import", str(bad), "--data-dir", str(tmp_path / "d")), "line 2"),
        (("import", str(tmp_path / "missing.jsonl"), "--data-dir", str(tmp_path / "d")), "does not exist"),
        (("import", str(bad), "--data-dir", str(a_file / "sub")), "is a file"),
        (("models", "--data-dir", str(a_file)), "no Exemplar database"),
    ]:
        result = run(*args)
        assert result.returncode != 0 and "Traceback" not in result.stderr, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and words in result.stderr, (args, result.stderr)
