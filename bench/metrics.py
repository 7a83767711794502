"""The disentanglement_lib metric set, ours vs a straightforward numpy/scikit-learn reference, side by side in one run.

A 10-factor benchmark grid (sizes 2..10), a fixed, partly entangled representation (a linear mix of the normalised
factors plus noise), 10,000 training samples (disentanglement_lib's defaults for every metric). Both implementations
get the same sampled codes; the reference follows disentanglement_lib's code line by line (codes as (D, N) arrays,
one scikit-learn model per factor or per (code, factor) pair). Prints per-metric times, the speed ratio and the
largest difference of any score.
Run: .venv/bin/python bench/metrics.py [--scale 1.0]; saves bench/results/metrics.json (or --out), whose table
BENCHMARKS.md shows through `markdown(results)` (`--markdown FILE`), never typed.
"""
import argparse, json, os, time, warnings
from pathlib import Path
import numpy as np
import scipy.stats
import torch
from sklearn import ensemble, linear_model, metrics as skm, preprocessing, svm
from disentangle import metrics as M

SIZES = (2, 3, 4, 5, 6, 7, 8, 9, 10, 10)

class Bench:
    "A 10-factor grid whose observations are the normalised factors (the representation below does the mixing)."
    factor_sizes = SIZES; num_factors = len(SIZES)
    def sample_factors(self, n, rng): return np.stack([rng.integers(0, s, n) for s in SIZES], 1)
    def observations(self, f): return torch.as_tensor(f / (np.array(SIZES) - 1.), dtype=torch.float64)

A = np.eye(10) + 0.25 * np.random.default_rng(0).normal(size=(10, 10)) * (np.random.default_rng(1).random((10, 10)) < 0.3)
def encode(x):   # partly entangled, noisy codes
    g = torch.Generator().manual_seed(int(x.sum() * 1000) % 2**31)
    return x @ torch.from_numpy(A) + 0.05 * torch.randn(x.shape, generator=g, dtype=torch.float64)

# ---------------------------------------------------------------- reference: disentanglement_lib, line by line
def _histogram_discretize(target, num_bins=20):
    discretized = np.zeros_like(target)
    for i in range(target.shape[0]):
        discretized[i, :] = np.digitize(target[i, :], np.histogram(target[i, :], num_bins)[1][:-1])
    return discretized

def discrete_mutual_info(mus, ys):
    m = np.zeros([mus.shape[0], ys.shape[0]])
    for i in range(mus.shape[0]):
        for j in range(ys.shape[0]):
            m[i, j] = skm.mutual_info_score(ys[j, :], mus[i, :])
    return m

def discrete_entropy(ys):
    h = np.zeros(ys.shape[0])
    for j in range(ys.shape[0]): h[j] = skm.mutual_info_score(ys[j, :], ys[j, :])
    return h

def ref_mig(mus_train, ys_train):
    discretized_mus = _histogram_discretize(mus_train)
    m = discrete_mutual_info(discretized_mus, ys_train)
    entropy = discrete_entropy(ys_train)
    sorted_m = np.sort(m, axis=0)[::-1]
    return {"discrete_mig": np.mean(np.divide(sorted_m[0, :] - sorted_m[1, :], entropy[:]))}

def ref_dci(mus_train, ys_train, mus_test, ys_test):
    num_factors, num_codes = ys_train.shape[0], mus_train.shape[0]
    importance_matrix = np.zeros(shape=[num_codes, num_factors], dtype=np.float64)
    train_loss, test_loss = [], []
    for i in range(num_factors):
        model = ensemble.GradientBoostingClassifier()
        model.fit(mus_train.T, ys_train[i, :])
        importance_matrix[:, i] = np.abs(model.feature_importances_)
        train_loss.append(np.mean(model.predict(mus_train.T) == ys_train[i, :]))
        test_loss.append(np.mean(model.predict(mus_test.T) == ys_test[i, :]))
    def disentanglement(im):
        per_code = 1. - scipy.stats.entropy(im.T + 1e-11, base=im.shape[1])
        if im.sum() == 0.: im = np.ones_like(im)
        return np.sum(per_code * im.sum(axis=1) / im.sum())
    def completeness(im):
        per_factor = 1. - scipy.stats.entropy(im + 1e-11, base=im.shape[0])
        if im.sum() == 0.: im = np.ones_like(im)
        return np.sum(per_factor * im.sum(axis=0) / im.sum())
    return {"informativeness_train": np.mean(train_loss), "informativeness_test": np.mean(test_loss),
            "disentanglement": disentanglement(importance_matrix), "completeness": completeness(importance_matrix)}

def ref_sap(mus, ys, mus_test, ys_test):
    score_matrix = np.zeros([mus.shape[0], ys.shape[0]])
    for i in range(mus.shape[0]):
        for j in range(ys.shape[0]):
            classifier = svm.LinearSVC(C=0.01, class_weight="balanced")
            classifier.fit(mus[i, :][:, np.newaxis], ys[j, :])
            pred = classifier.predict(mus_test[i, :][:, np.newaxis])
            score_matrix[i, j] = np.mean(pred == ys_test[j, :])
    sorted_matrix = np.sort(score_matrix, axis=0)
    return {"SAP_score": np.mean(sorted_matrix[-1, :] - sorted_matrix[-2, :])}

def ref_modularity_explicitness(mus_train, ys_train, mus_test, ys_test):
    mutual_information = discrete_mutual_info(_histogram_discretize(mus_train), ys_train)
    squared_mi = np.square(mutual_information); max_squared_mi = np.max(squared_mi, axis=1)
    numerator = np.sum(squared_mi, axis=1) - max_squared_mi
    denominator = max_squared_mi * (squared_mi.shape[1] - 1.)
    modularity_score = 1. - numerator / denominator
    modularity_score[max_squared_mi == 0.] = 0.
    mean, std = np.mean(mus_train, axis=1), np.std(mus_train, axis=1)
    tr_n = (mus_train - mean[:, np.newaxis]) / std[:, np.newaxis]; te_n = (mus_test - mean[:, np.newaxis]) / std[:, np.newaxis]
    tr, te = [], []
    for i in range(ys_train.shape[0]):
        clf = linear_model.LogisticRegression().fit(tr_n.T, ys_train[i, :])
        mlb = preprocessing.MultiLabelBinarizer()
        tr.append(skm.roc_auc_score(mlb.fit_transform(np.expand_dims(ys_train[i, :], 1)), clf.predict_proba(tr_n.T)))
        te.append(skm.roc_auc_score(mlb.fit_transform(np.expand_dims(ys_test[i, :], 1)), clf.predict_proba(te_n.T)))
    return {"modularity_score": np.mean(modularity_score), "explicitness_score_train": np.mean(tr), "explicitness_score_test": np.mean(te)}

def ref_beta_vae(train_points, train_labels, eval_points, eval_labels):
    model = linear_model.LogisticRegression(random_state=0)
    model.fit(train_points, train_labels)
    return {"train_accuracy": np.mean(model.predict(train_points) == train_labels), "eval_accuracy": np.mean(model.predict(eval_points) == eval_labels)}

def ref_factor_vae(train_groups, k_train, eval_groups, k_eval, global_variances, num_factors):
    active_dims = global_variances >= 0.05
    def votes_of(groups, ks):
        votes = np.zeros((num_factors, global_variances.shape[0]), dtype=np.int64)
        for z, k in zip(groups, ks):
            local_variances = np.var(z, axis=0, ddof=1)
            argmin = np.argmin(local_variances[active_dims] / global_variances[active_dims])
            votes[k, argmin] += 1
        return votes
    training_votes = votes_of(train_groups, k_train)
    classifier = np.argmax(training_votes, axis=0); other_index = np.arange(training_votes.shape[1])
    eval_votes = votes_of(eval_groups, k_eval)
    return {"train_accuracy": np.sum(training_votes[classifier, other_index]) / np.sum(training_votes),
            "eval_accuracy": np.sum(eval_votes[classifier, other_index]) / np.sum(eval_votes), "num_active_dims": int(active_dims.sum())}

# ---------------------------------------------------------------- the run
def main():
    ap = argparse.ArgumentParser(); ap.add_argument('--scale', type=float, default=1.0)
    ap.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'metrics.json'))
    ap.add_argument('--markdown', help='print the table of this saved results file and stop')
    a = ap.parse_args()
    if a.markdown: print(markdown(json.loads(Path(a.markdown).read_text()))); return
    warnings.simplefilter('ignore')   # both sides use the machine's cores as their libraries do (scikit-learn's trees: one)
    data, rng = Bench(), np.random.default_rng(0); n = lambda k: int(k * a.scale)
    zt, yt = M.sample_codes(data, encode, n(10000), rng); ze, ye = M.sample_codes(data, encode, n(5000), rng)
    bt = M._beta_vae_points(data, encode, n(10000), 64, rng, 4096); be = M._beta_vae_points(data, encode, n(5000), 64, rng, 4096)
    gv = M.sample_codes(data, encode, n(10000), rng)[0].var(0, ddof=1)
    ft = M._factor_vae_groups(data, encode, n(10000), 64, rng, 4096); fe = M._factor_vae_groups(data, encode, n(5000), 64, rng, 4096)
    M.GBT(n_estimators=1).fit(zt[:50], yt[:50, 0])   # compile numba once, outside the timings
    cases = [
        ('dci', lambda: M.dci(zt, yt, ze, ye), lambda: ref_dci(zt.T, yt.T, ze.T, ye.T)),
        ('mig', lambda: M.mig(zt, yt), lambda: ref_mig(zt.T, yt.T)),
        ('sap', lambda: M.sap(zt, yt, ze, ye), lambda: ref_sap(zt.T, yt.T, ze.T, ye.T)),
        ('modularity_explicitness', lambda: M.modularity_explicitness(zt, yt, ze, ye), lambda: ref_modularity_explicitness(zt.T, yt.T, ze.T, ye.T)),
        ('beta_vae', lambda: M.beta_vae_score(*bt, *be), lambda: ref_beta_vae(*bt, *be)),
        ('factor_vae', lambda: M.factor_vae_score(*ft, *fe, gv, 10), lambda: ref_factor_vae(*ft, *fe, gv, 10)),
    ]
    rows = {}
    for name, ours, ref in cases:
        t = time.perf_counter(); o = ours(); to = time.perf_counter() - t
        t = time.perf_counter(); r = ref(); tr = time.perf_counter() - t
        rows[name] = dict(reference_s=tr, ours_s=to, diff=max(abs(float(o[k]) - float(r[k])) for k in r), scores={k: float(o[k]) for k in o})
        print(name, rows[name], flush=True)
    from disentangle.core import cpu_name; hw = cpu_name()
    results = dict(date=time.strftime('%Y-%m-%d'), hardware=hw, cores=os.cpu_count(), torch=torch.__version__, scale=a.scale, n_train=n(10000),
                   load=os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan'), metrics=rows)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True); Path(a.out).write_text(json.dumps(results, indent=1) + '\n')
    print('\n' + markdown(results))

NAMES = {'dci': 'DCI (gradient-boosted trees)', 'mig': 'MIG', 'sap': 'SAP', 'modularity_explicitness': 'modularity / explicitness',
         'beta_vae': 'BetaVAE score', 'factor_vae': 'FactorVAE score'}
TARGET = dict(speedup=5., diff=0.02)          # at least 5x faster in all, every score within 0.02 of the reference

def markdown(results: dict) -> str:
    "BENCHMARKS.md's table of one saved results file, with the target's verdict computed from it."
    rows = results['metrics']
    T_ref, T_ours = sum(r['reference_s'] for r in rows.values()), sum(r['ours_s'] for r in rows.values())
    worst = max(r['diff'] for r in rows.values())
    out = [f"Measured {results['date']} on {results['hardware']} (`bench/metrics.py --scale {results['scale']}`: {results['n_train']:,} training samples, "
           f"10 factors; {results['cores']} cores, load average {results['load']:.1f}), torch {results['torch']}.", '',
           '| metric | reference | ours | speed-up | largest score difference |', '|---|---|---|---|---|']
    out += [f"| {NAMES.get(k, k)} | {r['reference_s']:.1f} s | {r['ours_s']:.2f} s | {r['reference_s'] / r['ours_s']:.1f}x | {r['diff']:.4f} |" for k, r in rows.items()]
    out.append(f'| **all** | **{T_ref:.1f} s** | **{T_ours:.1f} s** | **{T_ref / T_ours:.1f}x** | **{worst:.4f}** |')
    ok = T_ref / T_ours >= TARGET['speedup'] and worst <= TARGET['diff']
    out += ['', f"Target: at least {TARGET['speedup']:.0f}x faster with every score within {TARGET['diff']} ({'met' if ok else 'not met'})."]
    return '\n'.join(out)

if __name__ == '__main__':
    main()
