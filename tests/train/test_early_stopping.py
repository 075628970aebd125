from scaling.train import early_stopping as es


def test_counts_evaluations_since_the_last_real_improvement():
    assert es.evals_since_best([5.0, 4.0, 3.0]) == 0
    assert es.evals_since_best([5.0, 4.0, 4.1, 4.2]) == 2
    assert es.evals_since_best([5.0, 4.0, 3.999], min_delta=0.01) == 1   # below the relative threshold
    assert es.evals_since_best([5.0, float("nan"), 4.5]) == 0


def test_stops_only_after_patience_evaluations_without_improvement():
    history = [5.0, 4.0, 3.5, 3.6, 3.7]
    assert not es.should_stop(history, patience=3)
    assert es.should_stop(history + [3.55], patience=3)
    assert not es.should_stop(history + [3.4], patience=3)
    assert not es.should_stop(history + [9.0] * 10, patience=0)       # disabled
