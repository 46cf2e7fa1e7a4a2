import io

from mixprec.progress import tqdm


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_that_erases_itself_ends_its_line_in_a_log():
    log = io.StringIO()
    for _ in tqdm(range(3), desc="calibrating", leave=False, file=log):
        pass
    log.write("next line\n")
    lines = log.getvalue().split("\n")
    assert "next line" in lines  # on a line of its own, not after the bar's spaces
    assert any("calibrating" in line and "3/3" in line for line in lines)


def test_on_a_terminal_the_bar_still_erases_itself():
    screen = _Terminal()
    for _ in tqdm(range(3), desc="calibrating", leave=False, file=screen):
        pass
    screen.write("next line\n")
    last = screen.getvalue().split("\n")[-2]
    assert last.split("\r")[-1] == "next line" and last.split("\r")[-2].strip() == ""  # the bar was blanked


def test_a_disabled_bar_writes_nothing():
    log = io.StringIO()
    for _ in tqdm(range(3), leave=False, disable=True, file=log):
        pass
    assert log.getvalue() == ""
