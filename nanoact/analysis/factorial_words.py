"""The factorial section's words: the interaction sentence, the verdicts on the re-examined study's two claims
("architecture dominance", "activation insensitivity persists at both scales") and the headline. Each names its
test; an interaction or a dependence is claimed only when its test rejects.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from nanoact.analysis import factorial as fa
from nanoact.analysis.formatting import fixed, p_text

if TYPE_CHECKING:
    from nanoact.analysis.factorial_report import FactorialSection

_f, _p = fixed, p_text  # the report's number and p-value formats


def _small(x: float) -> str:
    """A share: 2 decimals, or 2 significant digits below 0.01 (so 0.00009 is not printed as 0.00)."""
    return f"{x:.{1 - math.floor(math.log10(abs(x)))}f}" if 0 < abs(x) < 0.01 else _f(x, 2)


def _count(sizes: str) -> str:
    return ", ".join(f"{int(n):,}" for n in sizes.split(", "))


def term_name(text: str, factor: str) -> str:
    """A term's generic name with the factor's own name: "activation x factor x seed" -> "activation × model.name
    × seed"."""
    return text.replace(" x ", " × ").replace("factor", factor)


def _term_words(t: fa.Term, factor: str) -> str:
    return (f"F({t.df}, {t.df_error}) = {_f(t.f, 2)}, p {_p(t.p)} (against {term_name(t.error, factor)}); partial η² = "
            f"{_f(t.partial_eta2, 2)}, 95% CI [{_f(t.eta2_lo, 2)}, {_f(t.eta2_hi, 2)}]")


def interaction_sentence(sec: FactorialSection, key: str = "final_val_loss") -> str:
    """The sentence on the interaction: claimed only when its test rejects (after Holm across outcomes)."""
    r = sec.results[key]
    h = next(x for x in sec.hypotheses if x.id == f"factorial/{key}/interaction")
    share = f"{_small(r.share)}, 95% CI [{_small(r.share_lo)}, {_small(r.share_hi)}]"
    if h.significant:
        return (f"The activation's effect on {r.outcome} depends on {sec.factor}: activation × {sec.factor} "
                f"{_term_words(r.interaction, sec.factor)}, Holm-adjusted p {_p(h.p_adjusted)}; the interaction is "
                f"{share} of the "
                "activation-related variation (SS_A×F / (SS_A + SS_A×F)).")
    return (f"No dependence of the activation's effect on {sec.factor} was detected for {r.outcome} (activation × "
            f"{sec.factor} {_term_words(r.interaction, sec.factor)}, Holm-adjusted p {_p(h.p_adjusted)}). "
            "Not detected is not "
            f"absent: an interaction of partial η² up to {_f(r.interaction.eta2_hi, 2)} is not excluded, and its share "
            f"of the activation-related variation is {share}.")


def _dominance(r, simple, hits, within: str) -> str:
    """The verdict on 'architecture dominance': is the architecture effect larger (descriptive ranges of means,
    and the main effects' partial η²), and does it overwhelm every activation difference (simple effects)?"""
    level_means = np.asarray(r.means, dtype=float).mean(axis=0)  # each architecture's mean over activations
    gaps = [h.estimate for h in simple]
    f_term, a_term = r.factor_term, r.activation
    spread = (f"The architectures' mean final val loss (over activations) spans {_f(np.ptp(level_means))} "
              f"({r.levels[int(np.argmin(level_means))]} lowest, {r.levels[int(np.argmax(level_means))]} highest), "
              f"against best-to-worst activation gaps of {_f(min(gaps))}–{_f(max(gaps))} within the architectures "
              "(ranges of means, descriptive), so " + (
                  "the architectures differ more than the activations within any one of them" if np.ptp(level_means)
                  > max(gaps) else "the activation gap within at least one architecture is as large as the "
                  "architectures' spread") + "; " if gaps else "")
    eta = (f"the architecture main effect has partial η² {_f(f_term.partial_eta2, 2)} [{_f(f_term.eta2_lo, 2)}, "
           f"{_f(f_term.eta2_hi, 2)}] against the activation's {_f(a_term.partial_eta2, 2)} [{_f(a_term.eta2_lo, 2)}, "
           f"{_f(a_term.eta2_hi, 2)}] (each against its own error term, so not one scale)")
    verdict = ("contradicted as stated: activation differences remain detectable within architectures" if hits else
               "not supported as stated: 'completely overwhelms' would need the activation differences within each "
               "architecture to be shown small (an equivalence margin), and they were only not detected")
    body = spread + eta
    return (f"**Claim 'architecture dominance'** (the architecture's capacity completely overwhelms any activation "
            f"difference): {verdict}. {body[0].upper()}{body[1:]}; {within}.")


def _within(sec: FactorialSection, unit: str, detail: bool = False) -> tuple[list, list, str]:
    """The simple effects on final val loss, those that reject, and the sentence on them."""
    simple = [h for h in sec.hypotheses if h.id.startswith("factorial/final_val_loss/simple/")]
    hits = [h for h in simple if h.significant]
    found = ", ".join(f"{h.subjects[0]}: worst {h.extra['worst']}, best {h.extra['best']}, gap {_f(h.estimate)}"
                      if detail else h.subjects[0] for h in hits)
    within = (f"the activation effect on final val loss is detected within {len(hits)} of {len(simple)} {unit} "
              f"({found}; RCBD F within each level, Holm across levels)" if hits else
              f"the activation effect on final val loss is not detected within any of the {len(simple)} {unit} (RCBD F "
              "within each level, Holm across levels), which at these seeds is not evidence that it is absent")
    return simple, hits, within


def verdicts(sec: FactorialSection) -> list[str]:
    """An explicit verdict on the re-examined study's two claims, where this factor speaks to one."""
    if "final_val_loss" not in sec.results:
        return []
    r = sec.results["final_val_loss"]
    simple, hits, within = _within(sec, "levels", detail=True)
    if sec.factor == "model.name":
        return [_dominance(r, simple, hits, within)]
    if sec.factor == "experiment" and len(set(sec.n_params.values())) == 1 and all(sec.n_params.values()):
        return [f"**Replication, not a test across scales**: the experiments train models of one size "
                f"({_count(next(iter(sec.n_params.values())))} parameters), so they do not speak to the claim "
                f"'activation insensitivity persists at both scales'; {within}."]
    if sec.factor == "experiment":
        verdict = ("contradicted at " + ", ".join(h.subjects[0] for h in hits) if hits else
                   "not supported: insensitivity would need equivalence within each scale, and the activation effect "
                   "was only not detected")
        return [f"**Claim 'activation insensitivity persists at both scales'**: {verdict}; {within}."]
    return []


def headline(sec: FactorialSection) -> str:
    """The factorial finding in one sentence for the report's headline: its interaction test on final val loss,
    and with the architecture as the factor the verdict on 'architecture dominance' (simple effects)."""
    r = sec.results.get("final_val_loss")
    if r is None:
        return ""
    h = next(x for x in sec.hypotheses if x.id == "factorial/final_val_loss/interaction")
    t = r.interaction
    stat = f"F({t.df}, {t.df_error}) = {_f(t.f, 2)}, Holm p {_p(h.p_adjusted)}"
    if h.significant:
        out = f"the activation's effect on final val loss depends on {sec.factor} ({stat}) [`{h.id}`]"
    else:
        out = (f"a dependence of the activation's effect on final val loss on {sec.factor} was not detected ({stat}; "
               f"partial η² up to {_f(t.eta2_hi, 2)} not excluded) [`{h.id}`]")
    if sec.factor != "model.name":
        return out
    _, hits, within = _within(sec, "architectures")
    verdict = "contradicted as stated" if hits else "not supported as stated"
    return f"{out}; the claim 'architecture dominance' is {verdict}: {within} [`factorial/final_val_loss/simple/*`]"


PD_WORDS = {"cross-vs-within": "how far apart the activations' distributions of fitted functions are (the "
                               "cross-vs-within excess of pd_tv)",
            "activation-only": "how far changing only the activation moves predictions against reseeding (the "
                               "same-seed activation-only excess of pd_tv)"}


def pd_sentences(sec: FactorialSection) -> list[str]:
    """One sentence per PD estimand: in how many pairs of levels it differs (jackknife t, Holm), the largest
    difference with its interval, and what was not detected."""
    if sec.pd_refused or not sec.pd_contrasts:
        return []
    byid = {h.id: h for h in sec.hypotheses}
    out = []
    for name, words in PD_WORDS.items():
        rows = [(c, byid[f"factorial/pd_tv/{name}/{c.a}-{c.b}"]) for c in sec.pd_contrasts if c.estimand == name]
        if not rows:
            continue
        hits = [(c, h) for c, h in rows if h.significant]
        c, h = max(hits or rows, key=lambda ch: abs(ch[0].diff))
        est, ids = f"{c.a} − {c.b} = {_f(c.diff)}, 95% CI [{_f(c.lo)}, {_f(c.hi)}]", f"[`factorial/pd_tv/{name}/*`]"
        if len(rows) == 1:  # one pair of levels: its p needs no adjustment
            verb = "differs" if hits else "was not detected to differ"
            out.append(f"PD: {words} {verb} between the two levels of {sec.factor} ({est}, p {_p(h.p_adjusted)}; "
                       f"seed-jackknife t; {ids})" + ("." if hits else "; not detected is not absent."))
            continue
        big = (f"largest {est}, Holm p {_p(h.p_adjusted)}; seed-jackknife t, Holm over {len(rows)} pairs of levels; "
               f"{ids}")
        if hits:
            out.append(f"PD: {words} differs between levels of {sec.factor} in {len(hits)} of {len(rows)} pairs "
                       f"({big}); in the other {len(rows) - len(hits)} a difference was not detected.")
        else:
            out.append(f"PD: a difference between levels of {sec.factor} in {words} was not detected in any of the "
                       f"{len(rows)} pairs ({big}); not detected is not absent.")
    return out

