"""benchmarks.checker, by table: it must see each kind of trouble it reports."""

from benchmarks.checker import Row, Stamped, check

H = "h1"
U1, U2 = "u-1", "u-2"


def verdict(journal, rows=None, libvirt=None, applied=None, stamped=(Stamped(H, 7, 1, 3),)):
    return check(stamped, journal, applied or {}, rows or {}, libvirt or {})


def test_all_accounted_for_and_in_step_is_clean():
    v = verdict([(H, 7, 1), (H, 7, 2), (H, 7, 3)],
                rows={U1: Row(H, "running", False, 7, 3)}, libvirt={H: {U1: "running"}},
                applied={U1: (7, 3)})
    assert v.clean and v.stamped == 3


def test_a_missing_sequence_number_is_lost():
    v = verdict([(H, 7, 1), (H, 7, 3)])
    assert (v.lost, v.lost_examples) == (1, ((H, 7, 2),))


def test_another_epoch_does_not_account_for_it():
    assert verdict([(H, 7, 1), (H, 8, 2), (H, 7, 3)]).lost == 1


def test_a_key_journaled_twice_is_applied_twice():
    assert verdict([(H, 7, 1), (H, 7, 2), (H, 7, 2), (H, 7, 3)]).applied_twice == 1


def test_an_older_event_left_over_a_newer_one_is_out_of_order():
    v = verdict([(H, 7, 1), (H, 7, 2), (H, 7, 3)], rows={U1: Row(H, "paused", False, 7, 2)},
                libvirt={H: {U1: "paused"}}, applied={U1: (7, 3)})
    assert v.out_of_order == 1


def test_differences_from_libvirt():
    rows = {U1: Row(H, "paused", False, 7, 3), U2: Row(H, "running", False, 7, 2),
            "u-3": Row(H, "running", True, 7, 1), "u-4": Row("h2", "running", False, 7, 1)}
    libvirt = {H: {U1: "running", "u-3": "running", "u-5": "shutdown"}, "h2": {"u-4": "running"}}
    v = verdict([(H, 7, 1), (H, 7, 2), (H, 7, 3)], rows=rows, libvirt=libvirt)
    # U1 in another state, u-3 deleted but running, u-5 missing, U2 gone from libvirt
    assert v.difference == 4
    assert (U1, "paused on h1", "running on h1") in v.difference_examples
