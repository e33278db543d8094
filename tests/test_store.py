"""The score store: a table is filled only where it lacks a part, and what is done is readable while the rest
is computed."""

import pandas as pd
import torch

from diffood.store import ScoreStore, Table


def _table(calls: list, peek=None) -> Table:
    def compute(x, t, draws, step):
        calls.append((len(x), t, tuple(draws)))
        if peek:
            peek()
        step(len(x) * len(draws))
        return pd.DataFrame([{"index": i, "t": t, "draw": d, "v": float(i + t + d)} for d in draws for i in range(len(x))])

    return Table("toy", "toy-key", ["dataset", "split", "role", "index", "t", "draw", "v"], {10: 2, 20: 1}, compute)


def _images(name, split, n):
    return torch.zeros(n, 1, 4, 4)


def test_a_table_fills_what_it_lacks_and_reads_back_the_rest(tmp_path):
    store, calls, seen = ScoreStore(tmp_path), [], []
    sets = [("id_val", "a", "val", 3), ("ood", "b", "test", 2)]
    first = store.fill(_table(calls), sets, _images, lambda done, total, what: seen.append((done, total)))
    assert sorted(calls) == [(2, 10, (0, 1)), (2, 20, (0,)), (3, 10, (0, 1)), (3, 20, (0,))]
    assert len(first.rows) == 3 * 3 + 2 * 3 and seen[-1] == (15, 15) and first.path == store.path(_table([]))
    again = store.fill(_table(calls), sets, _images)
    assert len(calls) == 4 and again.computed == []  # nothing recomputed
    pd.testing.assert_frame_equal(again.rows.sort_values(["role", "t", "draw", "index"], ignore_index=True),
                                  first.rows.sort_values(["role", "t", "draw", "index"], ignore_index=True),
                                  check_dtype=False)
    more = store.fill(_table(calls), [*sets, ("ood", "c", "test", 4)], _images)
    assert [p.dataset for p in more.computed] == ["c", "c"] and len(calls) == 6


def test_partial_results_are_readable_while_the_rest_is_computed(tmp_path):
    store, reader, calls, snapshots = ScoreStore(tmp_path, flush_s=0.0), ScoreStore(tmp_path), [], []

    def peek():  # another reader, between two parts: it sees what is done so far
        snapshots.append(len(reader.read(table)[0]))

    table = _table(calls, peek)
    store.fill(table, [("id_val", "a", "val", 3), ("ood", "b", "test", 2)], _images)
    assert snapshots[0] == 0 and snapshots == sorted(snapshots) and 0 < snapshots[-1] < 15
    assert len(reader.read(table)[0]) == 15


def test_two_sessions_asking_for_the_same_new_table_compute_it_once(tmp_path):
    """Two threads (two visitors of a served dashboard) fill the same table at once: each part is computed once,
    and both get every row."""
    import threading

    calls, started = [], threading.Event()

    def peek():  # the first to compute holds the lock while the second asks
        started.set()
        threading.Event().wait(0.2)

    sets = [("id_val", "a", "val", 3), ("ood", "b", "test", 2)]
    got = {}

    def visit(name):
        got[name] = ScoreStore(tmp_path).fill(_table(calls, peek), sets, _images).rows

    first = threading.Thread(target=visit, args=("first",))
    first.start()
    started.wait(10)
    visit("second")
    first.join()
    assert sorted(calls) == [(2, 10, (0, 1)), (2, 20, (0,)), (3, 10, (0, 1)), (3, 20, (0,))]  # once each
    assert len(got["first"]) == len(got["second"]) == 15


def test_a_table_fills_one_t_at_a_time_its_scores_own_t_first_and_writes_on_its_clock(tmp_path):
    """Parts come t by t over every set (the table's `first` t before the rest), so that each t is complete as
    early as it can be; writes follow `flush_s` (one per part at 0, none before the end at 1e9), not each t's
    end: a rewrite of the whole file per t cost the computation more than the pages gained."""
    for flush_s, written in ((0.0, [0, 3, 5, 11]), (1e9, [0, 0, 0, 0])):
        store, reader = ScoreStore(tmp_path / str(flush_s), flush_s=flush_s), ScoreStore(tmp_path / str(flush_s))
        calls, snapshots = [], []
        table = _table(calls, lambda: snapshots.append(len(reader.read(table)[0])))
        table.first = (20,)
        store.fill(table, [("id_val", "a", "val", 3), ("ood", "b", "test", 2)], _images)
        assert calls == [(3, 20, (0,)), (2, 20, (0,)), (3, 10, (0, 1)), (2, 10, (0, 1))]
        assert snapshots == written and len(reader.read(table)[0]) == 15
