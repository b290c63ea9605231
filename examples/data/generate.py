"""Writes the sample legal datasets in examples/data/ (deterministic; CC BY 4.0, see README.md there).

The clauses are written for this project: contract language assembled from hand-written clause families
with varied parties, amounts, periods and jurisdictions. They are realistic in form, not real contracts.

    python examples/data/generate.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
PARTIES = [
    ("Northwind Logistics LLC", "Harbor Analytics Inc."), ("Acme Biologics, Inc.", "Keystone Research Partners"),
    ("Bluewater Energy Corp.", "Summit Grid Services Ltd."), ("Crescent Health Systems", "Medline Data Co."),
    ("Orion Software GmbH", "Pinecrest Retail Group"), ("Atlas Freight S.A.", "Meridian Insurance Ltd."),
    ("Lumen Capital LP", "Redwood Advisory LLC"), ("Granite Manufacturing Co.", "Vector Components Inc."),
]
ROLES = [("Licensor", "Licensee"), ("Supplier", "Customer"), ("Provider", "Client"), ("Company", "Contractor"),
         ("Seller", "Buyer"), ("Vendor", "Purchaser")]
LAWS = ["the State of New York", "the State of Delaware", "England and Wales", "the State of California",
        "the Commonwealth of Massachusetts", "the State of Texas", "Ontario", "the State of Illinois"]
PERIODS = ["thirty (30) days", "sixty (60) days", "ninety (90) days", "fifteen (15) days", "ten (10) business days"]
TERMS = ["one (1) year", "two (2) years", "three (3) years", "five (5) years", "twelve (12) months"]
CAPS = ["the fees paid in the twelve (12) months preceding the claim", "one hundred thousand dollars ($100,000)",
        "the total fees payable under this Agreement", "two times (2x) the annual fees", "$250,000"]

RISK = {
    "high": [
        "{A} shall indemnify, defend and hold harmless {B} from and against any and all claims, losses and damages "
        "of any kind whatsoever, including those arising from {B}'s own negligence or wilful misconduct, without "
        "limitation as to amount.",
        "{B} may terminate this Agreement at any time, for any reason or no reason, without notice and without "
        "liability to {A}, and {A} shall not be entitled to any refund of prepaid fees.",
        "This Agreement shall automatically renew for successive terms of {term} unless terminated, and {A} "
        "waives any right to terminate upon renewal or to object to revised pricing.",
        "Notwithstanding anything to the contrary, {A}'s liability under this Agreement shall be unlimited, and "
        "{A} shall be liable for all indirect, consequential, special and punitive damages.",
        "{A} hereby irrevocably assigns to {B} all right, title and interest in any intellectual property "
        "conceived by {A} at any time, whether or not related to the Services, without further compensation.",
        "{B} may unilaterally amend the terms of this Agreement, including the fees, by posting revised terms, "
        "and {A}'s continued performance shall constitute acceptance of such amendments.",
        "{A} waives all rights to a trial by jury and to participate in any class action, and agrees that any "
        "dispute shall be resolved exclusively in a forum selected by {B} at its sole discretion.",
        "{A} shall not, for a period of {term} after termination anywhere in the world, engage in any business "
        "that competes directly or indirectly with any business of {B} or its affiliates.",
    ],
    "medium": [
        "Either party may terminate this Agreement for convenience upon {period} prior written notice, provided "
        "that {A} shall pay for all Services performed through the effective date of termination.",
        "Except for breaches of confidentiality, each party's aggregate liability shall not exceed {cap}.",
        "This Agreement shall renew automatically for additional terms of {term} unless either party gives "
        "written notice of non-renewal at least {period} before the end of the then-current term.",
        "{A} shall indemnify {B} against third-party claims to the extent caused by {A}'s breach of this "
        "Agreement, subject to the limitations of liability set out herein.",
        "{B} may increase the fees once per contract year by an amount not exceeding five percent (5%) upon "
        "{period} written notice to {A}.",
        "{A} may not assign this Agreement without the prior written consent of {B}, which consent shall not be "
        "unreasonably withheld, except to a successor in a merger or acquisition.",
        "During the term and for {period} thereafter, {A} shall not solicit for employment any employee of {B} "
        "who was directly involved in the performance of the Services.",
        "{B} shall use commercially reasonable efforts to meet the service levels, and {A}'s sole remedy for any "
        "failure shall be the service credits described in Schedule B.",
    ],
    "low": [
        "This Agreement shall be governed by and construed in accordance with the laws of {law}, without regard "
        "to its conflict of laws principles.",
        "All notices under this Agreement shall be in writing and delivered by hand, courier or email to the "
        "addresses set out above, and shall be effective upon receipt.",
        "Each party shall keep confidential the Confidential Information of the other party and use it solely "
        "for the purpose of performing its obligations under this Agreement.",
        "This Agreement may be executed in counterparts, each of which shall be deemed an original and all of "
        "which together shall constitute one instrument.",
        "If any provision of this Agreement is held invalid or unenforceable, the remaining provisions shall "
        "continue in full force and effect.",
        "Neither party shall be liable for any delay or failure to perform caused by events beyond its "
        "reasonable control, including fire, flood, pandemic or acts of government.",
        "The headings in this Agreement are for convenience only and shall not affect its interpretation.",
        "This Agreement constitutes the entire agreement between {A} and {B} with respect to its subject matter "
        "and supersedes all prior understandings, whether written or oral.",
        "{A} shall pay each undisputed invoice within {period} of receipt; disputed amounts shall be resolved in "
        "good faith by the parties' account managers.",
    ],
}

CLAUSES = {
    "Governing Law": [
        "This Agreement and any dispute arising out of it shall be governed by the laws of {law}.",
        "The validity, interpretation and performance of this Agreement shall be governed by the laws of {law}, "
        "excluding its choice of law rules.",
    ],
    "Termination For Convenience": [
        "Either party may terminate this Agreement without cause upon {period} written notice to the other party.",
        "{B} may terminate this Agreement for convenience at any time by giving {A} not less than {period} "
        "prior written notice.",
    ],
    "Cap On Liability": [
        "In no event shall either party's total liability arising out of this Agreement exceed {cap}.",
        "The aggregate liability of {A} for all claims under this Agreement shall be limited to {cap}.",
    ],
    "Renewal Term": [
        "Upon expiry of the Initial Term, this Agreement shall renew automatically for successive periods of "
        "{term} unless either party gives notice of non-renewal.",
        "This Agreement shall be extended for further terms of {term} unless terminated by either party at "
        "least {period} before expiry.",
    ],
    "Non-Compete": [
        "During the term of this Agreement and for {term} thereafter, {A} shall not provide competing services "
        "to any competitor of {B}.",
        "{A} agrees not to engage in any business competitive with {B} within the Territory for a period of "
        "{term} following termination.",
    ],
}
FILLER = [
    "{A} shall perform the Services in a professional and workmanlike manner in accordance with industry "
    "standards.",
    "All capitalised terms used but not defined herein shall have the meanings given in the Master Agreement.",
    "{B} shall provide {A} with reasonable access to its premises and personnel as required for the Services.",
    "Each party represents that it has full power and authority to enter into this Agreement.",
    "The parties shall meet quarterly to review performance under this Agreement.",
    "{A} shall maintain accurate books and records relating to the Services for at least {term}.",
]

SUMMARIES = [
    ("SECTION {n}. {title}. (a) In general.--The Secretary of {dept} shall establish a program to award grants "
     "to eligible {who} for the purpose of {purpose}. (b) Application.--To be eligible for a grant under this "
     "section, an entity shall submit an application at such time and in such manner as the Secretary may "
     "require. (c) Authorization.--There are authorized to be appropriated ${amount} for each of fiscal years "
     "{y1} through {y2} to carry out this section.",
     "Requires the Secretary of {dept} to award grants to {who} for {purpose}, and authorizes ${amount} per "
     "year for fiscal years {y1} through {y2}."),
    ("SECTION {n}. {title}. Section {sec} of title {tnum}, United States Code, is amended by striking "
     "\"{old} days\" and inserting \"{new} days\", and the Secretary of {dept} shall report to Congress on "
     "the effects of the amendment on {who} not later than {months} months after enactment.",
     "Changes a deadline from {old} to {new} days and requires the Secretary of {dept} to report on its effect "
     "on {who} within {months} months."),
    ("{A} and {B} agree that {A} shall supply the Products described in Schedule 1 for a term of {term}. "
     "{B} shall pay within {period} of invoice. Either party may terminate on {period} notice. The agreement "
     "is governed by the laws of {law}.",
     "{A} supplies products to {B} for {term}; payment is due within {period}; either side may terminate on "
     "{period} notice; {law} law applies."),
]
DEPTS = ["Labor", "Commerce", "Energy", "Agriculture", "Education", "Transportation", "Health and Human Services"]
WHO = ["small businesses", "rural hospitals", "community colleges", "State agencies", "nonprofit legal aid "
       "organizations", "tribal governments", "local water utilities"]
PURPOSE = ["improving cybersecurity", "expanding broadband access", "training apprentices",
           "modernizing court records", "reducing lead in drinking water", "supporting veterans' legal services"]
TITLES = ["Grant program", "Reporting requirement", "Technical amendment", "Pilot program", "Modernization"]


def fill(template: str, rng: random.Random) -> str:
    a, b = rng.choice(PARTIES)
    ra, rb = rng.choice(ROLES)
    use_roles = rng.random() < 0.5
    y1 = rng.randint(2025, 2029)
    return template.format(
        A=ra if use_roles else a, B=rb if use_roles else b, law=rng.choice(LAWS), period=rng.choice(PERIODS),
        term=rng.choice(TERMS), cap=rng.choice(CAPS), n=rng.randint(1, 12), title=rng.choice(TITLES),
        dept=rng.choice(DEPTS), who=rng.choice(WHO), purpose=rng.choice(PURPOSE),
        amount=f"{rng.randint(2, 90) * 1_000_000:,}", y1=y1, y2=y1 + rng.randint(2, 5), sec=rng.randint(100, 999),
        tnum=rng.randint(5, 50), old=rng.choice([30, 45, 60]), new=rng.choice([90, 120, 180]),
        months=rng.choice([6, 12, 18]),
    )


# Clauses whose risk turns on a number, not on wording: the model must read the notice period or the cap.
NOTICE = ("Either party may terminate this Agreement upon {n} written notice to the other party, and {A} "
          "shall cooperate in the orderly transition of the Services.")
SHORT_NOTICE = ["two (2) days", "five (5) days", "seventy-two (72) hours", "one (1) business day"]
LONG_NOTICE = ["thirty (30) days", "sixty (60) days", "ninety (90) days", "one hundred twenty (120) days"]
CAP = "The total liability of {A} under this Agreement shall not exceed {c}."
LOW_CAP = ["one hundred dollars ($100)", "the fees paid in the preceding month", "five hundred dollars ($500)"]
FAIR_CAP = ["the fees paid in the preceding twelve (12) months", "two million dollars ($2,000,000)",
            "three times (3x) the annual fees"]


def risk_rows(rng: random.Random, n: int) -> list[dict[str, str]]:
    # Uneven classes (low is the majority) so the majority baseline is a real bar to clear.
    weights = {"low": 0.45, "medium": 0.3, "high": 0.25}
    rows = []
    for _ in range(n):
        if rng.random() < 0.3:
            if rng.random() < 0.5:
                short = rng.random() < 0.5
                text = NOTICE.replace("{n}", rng.choice(SHORT_NOTICE if short else LONG_NOTICE))
            else:
                short = rng.random() < 0.5
                text = CAP.replace("{c}", rng.choice(LOW_CAP if short else FAIR_CAP))
            rows.append({"text": fill(text, rng), "label": "high" if short else "medium"})
            continue
        label = rng.choices(list(weights), weights=list(weights.values()))[0]
        rows.append({"text": fill(rng.choice(RISK[label]), rng), "label": label})
    return rows


def extraction_rows(rng: random.Random, n: int) -> list[dict[str, object]]:
    rows = []
    for i in range(n):
        parts: list[tuple[str, str | None]] = [(fill(rng.choice(FILLER), rng), None) for _ in range(rng.randint(2, 4))]
        for clause in rng.sample(list(CLAUSES), rng.randint(1, 3)):
            parts.append((fill(rng.choice(CLAUSES[clause]), rng), clause))
        rng.shuffle(parts)
        text, spans = "", []
        for k, (sentence, label) in enumerate(parts, start=1):
            prefix = f"{k}. "
            text += prefix
            if label is not None:
                spans.append({"start": len(text), "end": len(text) + len(sentence), "label": label})
            text += sentence + "\n"
        rows.append({"id": f"contract-{i:04d}", "text": text, "spans": spans})
    return rows


def paired_summaries(rng: random.Random, n: int) -> list[dict[str, str]]:
    rows = []
    for _ in range(n):
        src, tgt = rng.choice(SUMMARIES)
        seed = rng.random()
        # The same draw fills both templates so the summary states the facts of its own text.
        rows.append({"text": fill(src, random.Random(seed)), "summary": fill(tgt, random.Random(seed))})
    return rows


def write(path: Path, rows: list[dict[str, object]] | list[dict[str, str]]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def main() -> None:
    rng = random.Random(20261125)
    write(HERE / "risk_train.jsonl", risk_rows(rng, 400))
    write(HERE / "risk_validation.jsonl", risk_rows(rng, 100))
    write(HERE / "clauses_train.jsonl", extraction_rows(rng, 240))
    write(HERE / "clauses_validation.jsonl", extraction_rows(rng, 60))
    write(HERE / "bills_train.jsonl", paired_summaries(rng, 300))
    write(HERE / "bills_validation.jsonl", paired_summaries(rng, 60))


if __name__ == "__main__":
    main()
