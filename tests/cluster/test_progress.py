"""The cluster's progress bar on the driver (`Tally`), fed events as workers send them."""

from __future__ import annotations

from mergepkg.cluster.progress import BoardReporter, Tally


class Bar:
    def __init__(self):
        self.total = self.tensors = 0
        self.done = 0
        self.placed: list[str] = []

    def step_started(self, name, tensors, nbytes):
        self.tensors, self.total = tensors, nbytes

    def total_grown(self, tensors, nbytes):
        self.tensors += tensors
        self.total += nbytes

    def tensor_done(self, nbytes):
        self.done += 1

    def step_placed(self, name, key, node):
        self.placed.append(name)

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class Board:
    def __init__(self):
        self.events: list = []

    @property
    def tell(self):
        board = self

        class Tell:
            @staticmethod
            def remote(events):
                board.events.extend(events)

        return Tell


def test_a_step_the_driver_could_not_lay_out_adds_its_totals_when_its_node_starts_it():
    bar, board = Bar(), Board()
    tally = Tally(bar, {"k1": "known", "k2": "unseen"}, 10, 1000, {"k1"})
    assert (bar.tensors, bar.total) == (10, 1000)
    worker = BoardReporter(board, "k2", "node-a")
    worker.step_started("unseen", 39, 5000)  # laid out on its node
    tally.take(board.events)
    assert (bar.tensors, bar.total) == (49, 6000)
    tally.take([("placed", "k2", "node-b", 39, 5000), ("placed", "k1", "node-c", 10, 1000)])  # a retry; a known step
    assert (bar.tensors, bar.total) == (49, 6000) and bar.placed == ["unseen", "unseen", "known"]


def test_the_command_lines_bar_grows_to_the_steps_laid_out_on_nodes():
    from mergepkg.cli.output import ProgressReporter

    with ProgressReporter(enabled=False) as bar:
        tally = Tally(bar, {"k": "m"}, 0, 0, set())
        tally.take([("placed", "k", "node", 39, 5000), ("tensors", "k", 39, 5000)])
        (task,) = bar.progress.tasks
        assert (task.total, task.completed, task.fields["tensors"], task.fields["done"]) == (5000, 5000, 39, 39)
