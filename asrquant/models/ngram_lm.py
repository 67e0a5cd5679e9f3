"""An n-gram word language model of transcripts, written as an ARPA file.

Interpolated Kneser-Ney (Chen & Goodman 1998, with one absolute discount per order, estimated
as n1 / (n1 + 2 n2) from the counts of counts), the smoothing KenLM's `lmplz` uses. The lower
orders count continuations (how many distinct words precede an n-gram) instead of
occurrences, except for n-grams that start with <s>, which nothing can precede. The unigrams
are interpolated with the uniform distribution over the vocabulary and <unk>.

An interpolated model is exactly an ARPA back-off model: a seen n-gram stores its interpolated
probability, and the back-off weight of a context is its interpolation weight, which is what
an unseen word's probability is scaled by on the way down. So KenLM (inside flashlight-text)
reads the file and computes the same probabilities. Pure Python: no binary to download.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

from asrquant.checks import check_number

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
MAX_ORDER = 6
FALLBACK_DISCOUNT = 0.5  # when the counts of counts give none in (0, 1), as lmplz's fallback


def check_order(order: int, where: str = "lm_order") -> None:
    check_number(where, order, ge=1, le=MAX_ORDER, integer=True)


def kneser_ney_arpa(sentences: Iterable[Sequence[str]], order: int) -> str:
    """The ARPA text of an `order`-gram interpolated Kneser-Ney model of `sentences` (each a
    sequence of words; <s> and </s> are added). Probabilities are log10, as ARPA wants."""
    check_order(order)
    raw: list[Counter] = [Counter() for _ in range(order)]  # raw[k]: counts of (k+1)-grams
    for words in sentences:
        seq = (BOS, *words, EOS)
        for k in range(order):
            for i in range(len(seq) - k):
                if k or i:  # the unigram <s> is never predicted
                    raw[k][seq[i:i + k + 1]] += 1
    if len(raw[0]) < 2:  # </s> alone
        raise ValueError("an n-gram LM needs at least one transcript with a word")

    # Adjusted counts: raw at the top order and for n-grams starting with <s>, else the number
    # of distinct words seen before the n-gram (every other n-gram has one: <s> at least).
    adjusted: list[Counter] = [Counter() for _ in range(order - 1)] + [raw[-1]]
    for k in range(order - 1):
        for gram in raw[k + 1]:
            adjusted[k][gram[1:]] += 1
        for gram, count in raw[k].items():
            if gram[0] == BOS:
                adjusted[k][gram] = count

    discounts = [_discount(counts) for counts in adjusted]
    # Per context (the words before the last of an n-gram): total adjusted count, word types.
    totals: list[dict] = [defaultdict(int) for _ in range(order)]
    types: list[dict] = [defaultdict(int) for _ in range(order)]
    for k, counts in enumerate(adjusted):
        for gram, count in counts.items():
            totals[k][gram[:-1]] += count
            types[k][gram[:-1]] += 1

    def weight(k: int, context: tuple) -> float:  # the mass left to the lower order
        return discounts[k] * types[k][context] / totals[k][context]

    vocab_size = len(adjusted[0]) + 1  # the words and </s>, and <unk>
    uniform = weight(0, ()) / vocab_size
    probs = {(UNK,): uniform}
    for gram, count in adjusted[0].items():
        probs[gram] = (count - discounts[0]) / totals[0][()] + uniform
    logprob = [{gram: math.log10(p) for gram, p in probs.items()}]
    logprob[0][(BOS,)] = -99.0  # conventional: <s> is a context, never predicted
    for k in range(1, order):
        lower, probs = probs, {}
        for gram, count in adjusted[k].items():
            context = gram[:-1]
            probs[gram] = ((count - discounts[k]) / totals[k][context]
                           + weight(k, context) * lower[gram[1:]])
        logprob.append({gram: math.log10(p) for gram, p in probs.items()})

    # The back-off weight of a context (stored with it, one order down) is its weight.
    backoff = [{context: math.log10(weight(k + 1, context)) for context in totals[k + 1]}
               for k in range(order - 1)]
    return _arpa_text(logprob, backoff)


def _discount(counts: Counter) -> float:
    n1 = sum(1 for c in counts.values() if c == 1)
    n2 = sum(1 for c in counts.values() if c == 2)
    if n1 and n2:
        return n1 / (n1 + 2 * n2)
    return FALLBACK_DISCOUNT


def _arpa_text(logprob: list[dict], backoff: list[dict]) -> str:
    lines = ["", "\\data\\"]
    lines += [f"ngram {k + 1}={len(grams)}" for k, grams in enumerate(logprob)]
    for k, grams in enumerate(logprob):
        lines += ["", f"\\{k + 1}-grams:"]
        for gram in sorted(grams):
            line = f"{grams[gram]:.7f}\t{' '.join(gram)}"
            if k < len(logprob) - 1:
                line += f"\t{backoff[k].get(gram, 0.0):.7f}"
            lines.append(line)
    lines += ["", "\\end\\", ""]
    return "\n".join(lines)
