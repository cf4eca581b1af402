"""The training progress bar (tqdm): shown on a terminal, silent otherwise, forced on or off on request."""
import io

from mtl_ops.train.progress import Progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _run(stream, enabled=None):
    bar = Progress(3, "train 1", enabled=enabled, stream=stream)
    for loss in (0.5, 0.25, 0.125):
        bar.update(loss=loss)
    bar.close()
    return bar, stream.getvalue()


def test_shown_on_a_terminal_with_the_step_count_and_loss():
    bar, text = _run(_Terminal())
    assert bar.enabled
    assert "train 1" in text and "3/3" in text and "loss=0.125" in text


def test_silent_when_not_a_terminal():
    bar, text = _run(io.StringIO())
    assert not bar.enabled and text == ""


def test_forced_on_and_off():
    assert "3/3" in _run(io.StringIO(), enabled=True)[1]
    assert _run(_Terminal(), enabled=False)[1] == ""
