"""The simulated catalog: a deterministic function of the seed, generated lazily.

Nothing is built at start: product ``i`` is derived from ``(seed, i)`` when first asked for
(and cached), and its figures at any time ``t`` are a closed-form function of its profile and
``t``. The same seed gives the same catalog in every process.

- **ASINs** are ``B0`` + 8 base-36 digits: an affine bijection of the index, so an ASIN maps
  back to its index in O(1) and unknown ASINs are recognised without a table.
- **Prices** (smallest currency unit) follow a slow sine trend around a base price: most
  products drift a few percent, "volatile" ones (half) swing 18-45 % over 12-60 days, so
  at any time a fraction of the catalog is well below its 90-day average (a deal) and a
  refresh days later can see it stop qualifying.
- **Dips** (the deal feed): a global sequence of events, one every ``deal_interval_s`` on
  average, tied to the wall clock. Event ``k`` starts at ``SIM_EPOCH_S + (k + u_k) ×
  interval`` and lowers the price of one product by 5-50 % for 10 min to 3 h (its sales rank
  improves meanwhile). Events walk the catalog through a second affine bijection, so product
  ``i`` is hit once every ``size × interval`` seconds and its latest event is found in O(1).
- **Averages** are the exact means of the trend over the window (short dips are left out);
  ``min``/``max`` and the ``csv`` histories are sampled (every 2 days over 90 days, plus the
  value at the last update).
- **Keepa's copy**: a product's ``lastUpdate`` is the latest of its periodic update (every
  1-20 h), its last dip change and the last refresh a request caused; the data returned is
  the product as it was at ``lastUpdate``.
"""

from __future__ import annotations

import functools
import math
import random
import threading
from dataclasses import dataclass
from typing import Any

from sim.rand import hash_ints, unit

KEEPA_EPOCH_MINUTES = 21_564_000  # Keepa time: minutes since 2011-01-01 00:00 UTC
SIM_EPOCH_S = 1_577_836_800  # 2020-01-01 UTC: event 0 of the deal sequence
DAY_S = 86_400.0
HOUR_S = 3_600.0

DEFAULT_CATALOG_SIZE = 200_000
DEFAULT_DEAL_INTERVAL_S = 0.5  # one new deal every 0.5 s on average
DIP_MIN_S = 600.0
DIP_MAX_S = 3 * HOUR_S
DIP_DEPTH_MIN = 0.05
DIP_DEPTH_MAX = 0.50
RANK_DIP_FACTOR = 0.6  # the sales rank improves while the price is down
UPDATE_EVERY_MIN_S = 1 * HOUR_S
UPDATE_EVERY_MAX_S = 20 * HOUR_S
HISTORY_DAYS = 90
HISTORY_STEP_S = 2 * DAY_S
HISTORY_SAMPLES = int(HISTORY_DAYS * DAY_S // HISTORY_STEP_S)
HISTORICAL_OFFERS_MAX = 4  # offers no longer listed that ``offers`` still returns
MINUTES_PER_DAY = 1440
CONDITION_NEW = 1
USED_CONDITIONS = (2, 3, 4, 5)  # used: like new, very good, good, acceptable (Offer.java)
MINMAX_SAMPLES = 24  # samples of the stats interval (minInInterval, maxInInterval)
ALL_TIME_SAMPLES = 48  # samples since trackingSince (min, max: all-time)
PROFILE_CACHE = 65_536

# Price types (csv and stats indices, docs/KEEPA.md "Data conventions").
AMAZON = 0
NEW = 1
USED = 2
SALES = 3
LIST_PRICE = 4
NEW_FBA = 10
COUNT_NEW = 11
COUNT_USED = 12
RATING = 16
COUNT_REVIEWS = 17
BUY_BOX_SHIPPING = 18
PRODUCT_TYPE_STANDARD = 0
PRODUCT_TYPE_INVALID = 4
COUNT_NEW_FBA = 34
COUNT_NEW_FBM = 35
# One slot per Keepa price type: 36 since February 2026 (34 before). Types the simulator has no
# history for are null in ``csv`` and -1 in the ``stats`` arrays, as on Keepa.
N_TYPES = 36
HISTORY_TYPES = (AMAZON, NEW, USED, SALES, LIST_PRICE, NEW_FBA, COUNT_NEW, COUNT_USED)

AMAZON_SELLER_ID = "ATVPDKIKX0DER"
ASIN_DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
ASIN_SPACE = 36**8

ROOT_CATEGORIES = (
    (172282, "Electronics"),
    (1055398, "Home & Kitchen"),
    (165793011, "Toys & Games"),
    (3375251, "Sports & Outdoors"),
    (228013, "Tools & Home Improvement"),
    (3760901, "Health & Household"),
    (2619525011, "Appliances"),
    (1064954, "Office Products"),
    (2972638011, "Patio, Lawn & Garden"),
    (15684181, "Automotive"),
    (2619533011, "Pet Supplies"),
    (165796011, "Baby"),
    (3760911, "Beauty & Personal Care"),
    (468642, "Video Games"),
    (283155, "Books"),  # the replaced system's used-books hunt (examples/used-books.json)
)
_BRANDS = (
    "Acme", "Northwind", "Contoso", "Globex", "Initech", "Umbrella", "Stark", "Wayne",
    "Hooli", "Vandelay", "Soylent", "Tyrell", "Cyberdyne", "Aperture", "Gringotts", "Monarch",
)  # fmt: skip
_ADJECTIVES = (
    "Compact", "Wireless", "Stainless", "Portable", "Ergonomic", "Heavy-Duty", "Foldable",
    "Rechargeable", "Waterproof", "Premium", "Classic", "Smart", "Deluxe", "Ultra-Light",
)  # fmt: skip
_NOUNS = (
    "Blender", "Headphones", "Desk Lamp", "Backpack", "Drill", "Water Bottle", "Keyboard",
    "Air Fryer", "Yoga Mat", "Cookware Set", "Phone Case", "Dog Bed", "Board Game", "Kettle",
    "Tent", "Vacuum", "Monitor Arm", "Toothbrush", "Car Charger", "Storage Bins",
)  # fmt: skip


def _extremes(
    samples: list[tuple[float, list[int]]], skip: list[int]
) -> tuple[list[list[int] | None], list[list[int] | None]]:
    """The lowest and highest value of each price type over ``samples`` as ``[keepa_minute,
    value]`` (the latest time on a tie), None where a type has no value >= 0."""
    lows: list[list[int] | None] = [None] * N_TYPES
    highs: list[list[int] | None] = [None] * N_TYPES
    for ptype in range(N_TYPES):
        if ptype in skip:
            continue
        seen = [(vals[ptype], st) for st, vals in samples if vals[ptype] >= 0]
        if seen:
            lo = min(seen, key=lambda x: (x[0], -x[1]))
            hi = max(seen, key=lambda x: (x[0], x[1]))
            lows[ptype] = [keepa_minute(lo[1]), lo[0]]
            highs[ptype] = [keepa_minute(hi[1]), hi[0]]
    return lows, highs


def keepa_minute(unix_s: float) -> int:
    return int(unix_s // 60) - KEEPA_EPOCH_MINUTES


def keepa_minute_to_unix_ms(minute: int) -> int:
    return (minute + KEEPA_EPOCH_MINUTES) * 60_000


@dataclass(frozen=True, slots=True)
class Profile:
    """The fixed parameters of one product (its figures at any time derive from these)."""

    index: int
    asin: str
    title: str
    brand: str
    root_cat: int
    sub_cat: int
    base: float  # price level, smallest currency unit
    amp: float  # relative amplitude of the price trend
    omega: float  # rad/s of the price trend
    phase: float
    rank0: float  # 0 = no sales rank
    rank_amp: float
    rank_omega: float
    rank_phase: float
    offers0: int  # typical number of new offers; 0 = none
    offers_amp: float
    offers_omega: float
    offers_phase: float
    used0: int
    used_ratio: float
    has_amazon: bool
    amazon_premium: float
    fba_premium: float  # < 0: no FBA offer
    list_ratio: float  # 0: no list price
    rating: int  # 0-50; -1: no reviews
    reviews0: int
    reviews_per_day: float
    update_every_s: float
    update_phase_s: float
    tracking_since_s: float
    event_pos: int  # position of the product in each cycle of the deal-event sequence


@dataclass(frozen=True, slots=True)
class Dip:
    """One deal event: the product's price is down by ``depth`` from ``start`` to ``end``."""

    k: int
    index: int
    start: float
    end: float
    depth: float


def _coprime_multiplier(seed_hash: int, modulus: int) -> int:
    a = (seed_hash % modulus) | 1
    while math.gcd(a, modulus) != 1:
        a += 2
    return a % modulus


class Catalog:
    """The products of one seed. Thread-safe: profiles are immutable, the refresh table has
    its own lock."""

    def __init__(
        self,
        seed: int,
        size: int = DEFAULT_CATALOG_SIZE,
        deal_interval_s: float = DEFAULT_DEAL_INTERVAL_S,
    ) -> None:
        if size < 1:
            raise ValueError("catalog size must be >= 1")
        if deal_interval_s <= 0:
            raise ValueError("deal_interval_s must be > 0")
        self.seed = seed
        self.size = size
        self.deal_interval_s = deal_interval_s
        # index <-> ASIN code
        self._asin_mul = _coprime_multiplier(hash_ints(seed, 1), ASIN_SPACE)
        self._asin_inv = pow(self._asin_mul, -1, ASIN_SPACE)
        self._asin_add = hash_ints(seed, 2) % ASIN_SPACE
        # event position <-> product index
        self._ev_mul = _coprime_multiplier(hash_ints(seed, 3), size) if size > 1 else 0
        self._ev_inv = pow(self._ev_mul, -1, size) if size > 1 else 0
        self._ev_add = hash_ints(seed, 4) % size
        self._refreshed: dict[int, float] = {}
        self._refresh_lock = threading.Lock()
        self.profile = functools.lru_cache(maxsize=PROFILE_CACHE)(self._make_profile)

    # --- identities ---------------------------------------------------------------------

    def asin(self, index: int) -> str:
        code = (index * self._asin_mul + self._asin_add) % ASIN_SPACE
        digits = []
        for _ in range(8):
            code, d = divmod(code, 36)
            digits.append(ASIN_DIGITS[d])
        return "B0" + "".join(reversed(digits))

    def index(self, asin: str) -> int | None:
        """The index of a catalog ASIN, None for any other string."""
        if len(asin) != 10 or not asin.startswith("B0"):
            return None
        code = 0
        for ch in asin[2:]:
            d = ASIN_DIGITS.find(ch)
            if d < 0:
                return None
            code = code * 36 + d
        index = ((code - self._asin_add) * self._asin_inv) % ASIN_SPACE
        return index if index < self.size else None

    def asins(self, offset: int, limit: int) -> list[str]:
        start = max(0, offset)
        return [self.asin(i) for i in range(start, min(self.size, start + max(0, limit)))]

    # --- profiles -----------------------------------------------------------------------

    def _make_profile(self, index: int) -> Profile:
        r = random.Random(hash_ints(self.seed, 100, index))
        root_cat, _ = ROOT_CATEGORIES[r.randrange(len(ROOT_CATEGORIES))]
        brand = _BRANDS[r.randrange(len(_BRANDS))]
        model = f"{ASIN_DIGITS[10 + r.randrange(26)]}{r.randrange(100, 9999)}"
        title = f"{brand} {_ADJECTIVES[r.randrange(len(_ADJECTIVES))]} "
        title += f"{_NOUNS[r.randrange(len(_NOUNS))]} {model}"
        base = min(150_000.0, max(299.0, math.exp(r.gauss(math.log(2500.0), 0.85))))
        volatile = r.random() < 0.5
        amp = r.uniform(0.18, 0.45) if volatile else r.uniform(0.0, 0.08)
        if r.random() < 0.03:
            rank0 = 0.0
        else:
            rank0 = math.exp(r.uniform(math.log(50.0), math.log(3_000_000.0)))
        offers0 = 0 if r.random() < 0.05 else min(60, 1 + int(r.expovariate(1 / 10.0)))
        offers_amp = r.uniform(0.0, min(3.0, offers0 / 3.0))
        has_amazon = offers0 >= 1 and r.random() < 0.35
        used0 = 1 + int(r.expovariate(1 / 4.0)) if r.random() < 0.5 else 0
        has_reviews = r.random() < 0.9
        update_every = r.uniform(UPDATE_EVERY_MIN_S, UPDATE_EVERY_MAX_S)
        event_pos = ((index - self._ev_add) * self._ev_inv) % self.size if self.size > 1 else 0
        return Profile(
            index=index,
            asin=self.asin(index),
            title=title,
            brand=brand,
            root_cat=root_cat,
            sub_cat=root_cat * 10 + r.randrange(1, 10),
            base=base,
            amp=amp,
            omega=2 * math.pi / (r.uniform(12.0, 60.0) * DAY_S),
            phase=r.uniform(0.0, 2 * math.pi),
            rank0=rank0,
            rank_amp=r.uniform(0.05, 0.35),
            rank_omega=2 * math.pi / (r.uniform(5.0, 40.0) * DAY_S),
            rank_phase=r.uniform(0.0, 2 * math.pi),
            offers0=offers0,
            offers_amp=offers_amp,
            offers_omega=2 * math.pi / (r.uniform(3.0, 30.0) * DAY_S),
            offers_phase=r.uniform(0.0, 2 * math.pi),
            used0=used0,
            used_ratio=r.uniform(0.55, 0.85),
            has_amazon=has_amazon,
            amazon_premium=r.uniform(0.0, 0.08),
            fba_premium=r.uniform(0.0, 0.06) if r.random() < 0.6 else -1.0,
            list_ratio=r.uniform(1.1, 1.6) if r.random() < 0.7 else 0.0,
            rating=r.randint(25, 50) if has_reviews else -1,
            reviews0=int(math.exp(r.uniform(0.0, math.log(20_000.0)))) if has_reviews else 0,
            reviews_per_day=r.uniform(0.0, 3.0) if has_reviews else 0.0,
            update_every_s=update_every,
            update_phase_s=r.uniform(0.0, update_every),
            tracking_since_s=SIM_EPOCH_S - r.uniform(0.0, 8 * 365 * DAY_S),
            event_pos=event_pos,
        )

    # --- deal events --------------------------------------------------------------------

    def event(self, k: int) -> Dip:
        """Deal event ``k`` (any integer; event times increase with ``k``)."""
        h = hash_ints(self.seed, 200, k)
        u = (h & 0x1FFFFF) / float(1 << 21)
        v = ((h >> 21) & 0x1FFFFF) / float(1 << 21)
        w = ((h >> 42) & 0x1FFFFF) / float(1 << 21)
        start = SIM_EPOCH_S + (k + 0.999 * u) * self.deal_interval_s
        duration = DIP_MIN_S + (DIP_MAX_S - DIP_MIN_S) * v * v
        depth = DIP_DEPTH_MIN + (DIP_DEPTH_MAX - DIP_DEPTH_MIN) * w
        index = (self._ev_mul * (k % self.size) + self._ev_add) % self.size
        return Dip(k=k, index=index, start=start, end=start + duration, depth=depth)

    def event_index_at(self, t: float) -> int:
        """The largest k whose slot begins at or before ``t`` (event k may start just after)."""
        return math.floor((t - SIM_EPOCH_S) / self.deal_interval_s)

    def latest_event(self, p: Profile, t: float) -> Dip:
        """The product's latest deal event that started at or before ``t``."""
        kf = self.event_index_at(t)
        k = ((kf - p.event_pos) // self.size) * self.size + p.event_pos
        ev = self.event(k)
        if ev.start > t:
            ev = self.event(k - self.size)
        return ev

    def dip_at(self, p: Profile, t: float) -> Dip | None:
        ev = self.latest_event(p, t)
        return ev if ev.start <= t < ev.end else None

    # --- Keepa's copy -------------------------------------------------------------------

    def last_price_change(self, p: Profile, t: float) -> float:
        """When the product's latest dip began, or ended if it is over, as of ``t``."""
        ev = self.latest_event(p, t)
        return ev.end if ev.end <= t else ev.start

    def model_last_update(self, p: Profile, t: float) -> float:
        """When Keepa last updated the product on its own, as of ``t``."""
        periodic = t - ((t - p.update_phase_s) % p.update_every_s)
        return max(periodic, self.last_price_change(p, t))

    def last_update(self, p: Profile, t: float) -> float:
        with self._refresh_lock:
            refreshed = self._refreshed.get(p.index)
        model = self.model_last_update(p, t)
        return max(model, refreshed) if refreshed is not None and refreshed <= t else model

    def refresh(self, p: Profile, now: float) -> None:
        with self._refresh_lock:
            self._refreshed[p.index] = now

    # --- figures ------------------------------------------------------------------------

    def offer_counts(self, p: Profile, t: float) -> tuple[int, int]:
        """(new offers, used offers) at ``t``."""
        x = p.offers_omega * (t - SIM_EPOCH_S) + p.offers_phase
        n_new = 0
        if p.offers0 > 0:
            n_new = max(0, round(p.offers0 + p.offers_amp * math.sin(x)))
            if p.has_amazon:
                n_new = max(1, n_new)
        n_used = max(0, round(p.used0 + math.sin(x + 1.0))) if p.used0 > 0 else 0
        return n_new, n_used

    def _reviews(self, p: Profile, t: float) -> int:
        if p.rating < 0:
            return 0
        return p.reviews0 + int(max(0.0, t - SIM_EPOCH_S) / DAY_S * p.reviews_per_day)

    @staticmethod
    def _levels(
        p: Profile,
        trend: float,
        rank_trend: float,
        dip: float,
        n_new: int,
        n_used: int,
        reviews: int,
    ) -> list[int]:
        out = [-1] * N_TYPES
        if n_new >= 1:
            new = max(1, round(p.base * trend * (1.0 - dip)))
            out[NEW] = new
            out[BUY_BOX_SHIPPING] = new
            if p.has_amazon:
                out[AMAZON] = round(new * (1.0 + p.amazon_premium))
            if p.fba_premium >= 0:
                out[NEW_FBA] = round(new * (1.0 + p.fba_premium))
        out[COUNT_NEW_FBA] = (n_new + 1) // 2 if p.fba_premium >= 0 else 0
        out[COUNT_NEW_FBM] = n_new - out[COUNT_NEW_FBA]
        if n_used >= 1:
            out[USED] = max(1, round(p.base * trend * p.used_ratio))
        if p.rank0 > 0:
            factor = RANK_DIP_FACTOR if dip > 0 else 1.0
            out[SALES] = max(1, round(p.rank0 * rank_trend * factor))
        if p.list_ratio > 0:
            out[LIST_PRICE] = round(p.base * p.list_ratio)
        out[COUNT_NEW] = n_new
        out[COUNT_USED] = n_used
        if p.rating >= 0:
            out[RATING] = p.rating
            out[COUNT_REVIEWS] = reviews
        return out

    def values(self, p: Profile, t: float) -> list[int]:
        """The product's figures at ``t``, indexed by price type (-1: none)."""
        x = t - SIM_EPOCH_S
        trend = 1.0 + p.amp * math.sin(p.omega * x + p.phase)
        rank_trend = 1.0 + p.rank_amp * math.sin(p.rank_omega * x + p.rank_phase)
        dip = self.dip_at(p, t)
        n_new, n_used = self.offer_counts(p, t)
        return self._levels(
            p, trend, rank_trend, dip.depth if dip else 0.0, n_new, n_used, self._reviews(p, t)
        )

    @staticmethod
    def _mean_sine(amp: float, omega: float, phase: float, x_end: float, window: float) -> float:
        """Mean of ``1 + amp·sin(omega·x + phase)`` over ``[x_end - window, x_end]``."""
        a = omega * (x_end - window) + phase
        b = omega * x_end + phase
        return 1.0 + amp * (math.cos(a) - math.cos(b)) / (omega * window)

    def averages(self, p: Profile, t: float, days: float) -> list[int]:
        """Mean figures over the ``days`` before ``t`` (the trend; short dips left out)."""
        window = days * DAY_S
        x = t - SIM_EPOCH_S
        trend = self._mean_sine(p.amp, p.omega, p.phase, x, window)
        rank_trend = self._mean_sine(p.rank_amp, p.rank_omega, p.rank_phase, x, window)
        reviews = self._reviews(p, t - window / 2)
        n_new = p.offers0 if not p.has_amazon else max(1, p.offers0)
        return self._levels(p, trend, rank_trend, 0.0, n_new, p.used0, reviews)

    def _samples(
        self, p: Profile, t: float, window: float, count: int
    ) -> list[tuple[float, list[int]]]:
        step = window / count
        return [(t - j * step, self.values(p, t - j * step)) for j in range(count, 0, -1)]

    # --- the Keepa product object -------------------------------------------------------

    def product(
        self,
        p: Profile,
        data_time: float,
        *,
        domain: int,
        stats_days: int | None,
        history: bool,
        offers_returned: int | None,
        offers_ok: bool,
        buybox: bool,
        rating: bool,
    ) -> dict[str, Any]:
        """The product as Keepa's copy had it at ``data_time``. ``offers_returned`` is the
        number of offers to list (None: offers were not requested)."""
        current = self.values(p, data_time)
        with_buybox = buybox or offers_returned is not None
        extra = offers_returned is not None
        if not (rating or extra):
            current[RATING] = current[COUNT_REVIEWS] = -1
        if not with_buybox:
            current[BUY_BOX_SHIPPING] = -1
        if offers_returned is None:
            current[NEW_FBA] = -1  # extra data: only with offers
        obj: dict[str, Any] = {
            "asin": p.asin,
            "domainId": domain,
            "productType": 0,
            "title": p.title,
            "brand": p.brand,
            "rootCategory": p.root_cat,
            "categories": [p.sub_cat],
            "salesRankReference": p.root_cat if p.rank0 > 0 else -1,
            "trackingSince": keepa_minute(p.tracking_since_s),
            "lastUpdate": keepa_minute(data_time),
            "lastPriceChange": keepa_minute(self.last_price_change(p, data_time)),
        }
        samples: list[tuple[float, list[int]]] | None = None
        if history:
            samples = self._samples(p, data_time, HISTORY_DAYS * DAY_S, HISTORY_SAMPLES)
            obj["csv"] = self._csv(samples, data_time, current, rating or extra, with_buybox, extra)
        if stats_days is not None:
            obj["stats"] = self._stats(p, data_time, stats_days, current, offers_returned)
            if with_buybox:
                obj["stats"].update(
                    {
                        "buyBoxPrice": current[NEW],
                        "buyBoxShipping": 0 if current[NEW] >= 0 else -1,
                        "buyBoxIsAmazon": False,
                        "buyBoxIsFBA": unit(self.seed, 302, p.index, 0) < 0.5,
                    }
                )
        if with_buybox:
            # The buy box goes to the lowest new offer (offer 0).
            obj["buyBoxSellerIdHistory"] = [str(keepa_minute(data_time)), self._seller_id(p, 0)]
        if offers_returned is not None:
            obj["offersSuccessful"] = offers_ok
            obj["lastOffersUpdate"] = keepa_minute(data_time) if offers_ok else -1
            offers, live = (
                self._offers(p, data_time, current, offers_returned) if offers_ok else ([], [])
            )
            obj["offers"] = offers
            obj["liveOffersOrder"] = live
            if "stats" in obj:
                obj["stats"]["retrievedOfferCount"] = len(offers)
        if rating:
            obj["lastRatingUpdate"] = keepa_minute(data_time)
        return obj

    @staticmethod
    def invalid_product(asin: str, domain: int) -> dict[str, Any]:
        """What Keepa answers for an ASIN it has no data for: productType 4 (INVALID,
        "no data available due to invalid or deprecated asin"), no figures."""
        return {
            "asin": asin,
            "domainId": domain,
            "productType": PRODUCT_TYPE_INVALID,
            "title": None,
            "csv": None,
            "lastUpdate": 0,
            "lastPriceChange": 0,
            "trackingSince": 0,
        }

    @staticmethod
    def _csv(
        samples: list[tuple[float, list[int]]],
        data_time: float,
        current: list[int],
        rating: bool,
        buybox: bool,
        extra: bool,
    ) -> list[list[int] | None]:
        points = [*samples, (data_time, current)]
        types = [t for t in HISTORY_TYPES if extra or t != NEW_FBA]
        types += [COUNT_NEW_FBA, COUNT_NEW_FBM]
        if rating:
            types += [RATING, COUNT_REVIEWS]
        csv: list[list[int] | None] = [None] * N_TYPES
        for ptype in types:
            series: list[int] = []
            last: int | None = None
            for t, vals in points:
                if vals[ptype] != last:
                    series += [keepa_minute(t), vals[ptype]]
                    last = vals[ptype]
            if any(v >= 0 for v in series[1::2]):
                csv[ptype] = series
        if buybox:
            triples: list[int] = []
            last = None
            for t, vals in points:
                if vals[NEW] != last:
                    triples += [keepa_minute(t), vals[NEW], 0 if vals[NEW] >= 0 else -1]
                    last = vals[NEW]
            csv[BUY_BOX_SHIPPING] = triples
        return csv

    def _stats(
        self,
        p: Profile,
        t: float,
        days: int,
        current: list[int],
        offers_returned: int | None,
    ) -> dict[str, Any]:
        """Keepa's ``stats`` object (StatsObject.java / Stats.java): ``current``, the averages,
        ``min``/``max`` all-time (since ``trackingSince``) and ``minInInterval``/
        ``maxInInterval`` over the last ``days``: ``[keepa_minute, value]`` per price type,
        null for a type without any data, ``[-1, -1]`` for one without data in the interval."""
        interval = [*self._samples(p, t, days * DAY_S, MINMAX_SAMPLES), (t, current)]
        span = max(days * DAY_S, t - p.tracking_since_s)
        all_time = [*self._samples(p, t, span, ALL_TIME_SAMPLES), *interval]
        skip = [
            ptype
            for ptype in (RATING, COUNT_REVIEWS, BUY_BOX_SHIPPING, NEW_FBA)
            if current[ptype] < 0  # extra data not asked for
        ]
        low, high = _extremes(all_time, skip)
        low_in, high_in = _extremes(interval, skip)
        for ptype in range(N_TYPES):
            if low[ptype] is not None and low_in[ptype] is None:
                low_in[ptype] = high_in[ptype] = [-1, -1]  # data, but none in the interval

        hidden = [i for i in (RATING, COUNT_REVIEWS, NEW_FBA) if current[i] < 0]  # not asked for

        def masked(values: list[int]) -> list[int]:
            for i in hidden:
                values[i] = -1
            return values

        n_new, n_used = self.offer_counts(p, t)
        return {
            "current": current,
            "avg": masked(self.averages(p, t, days)),
            "avg30": masked(self.averages(p, t, 30)),
            "avg90": masked(self.averages(p, t, 90)),
            "avg180": masked(self.averages(p, t, 180)),
            "min": low,
            "max": high,
            "minInInterval": low_in,
            "maxInInterval": high_in,
            # Stats.java: the number of offers of all conditions (new and used here); the
            # new-offer count is csv/current COUNT_NEW (11).
            "totalOfferCount": n_new + n_used,
            "lastOffersUpdate": keepa_minute(t) if offers_returned is not None else -1,
            "statsDays": days,
        }

    def _seller_id(self, p: Profile, j: int) -> str:
        code = hash_ints(self.seed, 300, p.index, j) % (36**12)
        chars = []
        for _ in range(12):
            code, d = divmod(code, 36)
            chars.append(ASIN_DIGITS[d])
        return "A" + "".join(chars)

    def _offers(
        self, p: Profile, t: float, current: list[int], count: int
    ) -> tuple[list[dict[str, Any]], list[int]]:
        """(``offers``, ``liveOffersOrder``): ``count`` live new offers at ``t`` and, as on
        Keepa (Product.java), offers no longer listed (historical: new and used, last seen
        days ago), which stay in ``offers`` but not in ``liveOffersOrder``. The array is not
        in listing order: ``liveOffersOrder`` holds the indices of the live offers as Amazon
        lists them, lowest price (with shipping) first."""
        minute = keepa_minute(t)
        historical = []
        n_hist = int(unit(self.seed, 303, p.index, 0) * (HISTORICAL_OFFERS_MAX + 1))
        for h in range(n_hist):
            seen = minute - MINUTES_PER_DAY * (1 + int(unit(self.seed, 304, p.index, h) * 60))
            used = unit(self.seed, 305, p.index, h) < 0.5
            condition = USED_CONDITIONS[h % len(USED_CONDITIONS)] if used else CONDITION_NEW
            price = max(1, round(p.base * (p.used_ratio if used else 1.0)))
            historical.append(
                self._offer(p, 100 + h, seen, condition, price, 499, amazon=False, fba=False)
            )
        live = []
        lowest = current[NEW]
        for j in range(count if lowest >= 0 else 0):
            amazon = p.has_amazon and j == 1
            if j == 0:
                price = lowest
            elif amazon:
                price = current[AMAZON]
            else:
                spread = 0.015 * j * (0.5 + unit(self.seed, 301, p.index, j))
                price = round(lowest * (1.0 + spread))
            fba = amazon or unit(self.seed, 302, p.index, j) < 0.5
            live.append(
                self._offer(p, j, minute, CONDITION_NEW, price, 0 if fba else 499, amazon, fba)
            )
        offers = [*historical, *live]
        order = sorted(
            range(len(historical), len(offers)),
            key=lambda i: (offers[i]["offerCSV"][1] + offers[i]["offerCSV"][2], i),
        )
        return offers, order

    def _offer(
        self,
        p: Profile,
        offer_id: int,
        seen: int,
        condition: int,
        price: int,
        shipping: int,
        amazon: bool,
        fba: bool,
    ) -> dict[str, Any]:
        return {
            "offerId": offer_id,
            "sellerId": AMAZON_SELLER_ID if amazon else self._seller_id(p, offer_id),
            "lastSeen": seen,
            "condition": condition,
            "isPrime": fba,
            "isFBA": fba,
            "isAmazon": amazon,
            "isShippable": True,
            "isPreorder": False,
            "isWarehouseDeal": False,
            "isMAP": False,
            "offerCSV": [seen, price, shipping],
        }
