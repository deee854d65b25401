"""Keepa's marketplaces as the dashboard shows them: the Amazon site, the currency, the links.

Keepa domain ids (KEEPA_API.md): 1 com, 2 co.uk, 3 de, 4 fr, 5 co.jp, 6 ca, 8 it, 9 es,
10 in, 11 com.mx, 12 com.br (7 is reserved). Prices are integers in the currency's smallest
unit (cents; whole yen on co.jp); a negative price means "no offer".
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Domain:
    id: int
    tld: str
    currency: str
    symbol: str
    decimals: int = 2

    def amazon_url(self, asin: str) -> str:
        return f"https://www.amazon.{self.tld}/dp/{asin}"

    def keepa_url(self, asin: str) -> str:
        return f"https://keepa.com/#!product/{self.id}-{asin}"

    def money(self, amount: int | float | None) -> str:
        """``amount`` (smallest unit) as text, e.g. ``$12.34``; ``-`` for none or no offer."""
        if amount is None or amount < 0:
            return "-"
        value = amount / (10**self.decimals)
        return f"{self.symbol}{value:,.{self.decimals}f}"


DOMAINS: dict[int, Domain] = {
    d.id: d
    for d in (
        Domain(1, "com", "USD", "$"),
        Domain(2, "co.uk", "GBP", "£"),
        Domain(3, "de", "EUR", "€"),
        Domain(4, "fr", "EUR", "€"),
        Domain(5, "co.jp", "JPY", "¥", 0),
        Domain(6, "ca", "CAD", "CA$"),
        Domain(8, "it", "EUR", "€"),
        Domain(9, "es", "EUR", "€"),
        Domain(10, "in", "INR", "₹"),
        Domain(11, "com.mx", "MXN", "MX$"),
        Domain(12, "com.br", "BRL", "R$"),
    )
}


def domain(domain_id: int) -> Domain:
    """The marketplace of ``domain_id``; an id Keepa does not have gets a neutral stand-in
    (its links go to amazon.com) so a bad row never breaks a page."""
    return DOMAINS.get(domain_id) or Domain(domain_id, "com", "?", "", 2)
