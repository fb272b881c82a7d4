"""Progress output: a bounded number of plain lines in a log, a bar redrawn in place on a terminal."""

import io

from rrdist.progress import Progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_at_most_ten_lines_per_loop():
    out = io.StringIO()
    progress = Progress("epoch 1/3", 1000, stream=out, quiet_s=0.0)
    for done in range(1, 1001):
        progress.update(done, loss=0.5)
    progress.close()
    lines = out.getvalue().splitlines()
    assert 1 <= len(lines) <= 10
    assert lines[-1].startswith("epoch 1/3 100% 1000/1000 steps") and "loss 0.5" in lines[-1] and "ETA" in lines[-1]
    assert "\r" not in out.getvalue()


def test_a_short_loop_stays_quiet_in_a_log():
    out = io.StringIO()
    progress = Progress("epoch 1/3", 50, stream=out)  # done in far less than quiet_s
    for done in range(1, 51):
        progress.update(done)
    assert out.getvalue() == ""


def test_a_terminal_gets_one_line_redrawn():
    out = Terminal()
    progress = Progress("linear evaluation", 3, stream=out, unit="epochs")
    for done in range(1, 4):
        progress.update(done)
    progress.close()
    text = out.getvalue()
    assert text.startswith("\r[") and text.endswith("\n") and text.count("\n") == 1
    assert "3/3 epochs" in text
