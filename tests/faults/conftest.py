"""The fault suite's table in the terminal summary."""


def pytest_terminal_summary(terminalreporter):
    from tests.faults.test_faults import TABLE

    if TABLE:
        terminalreporter.section("fault suite")
        for line in TABLE:
            terminalreporter.write_line(line)
