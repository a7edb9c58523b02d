"""Starting prices for a few OpenAI models, so costs show from the first request; staff check and
correct them in the admin (a correction is a new price with a later "valid from"). Seeded by
migration 0007; `seed_prices` takes the model class so the migration can pass its historical one."""

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

VALID_FROM = datetime(2025, 8, 7, tzinfo=UTC)
NOTE = "Starting value (OpenAI's list price, standard tier, as of 2025-08): check it against your invoice."
# model: input, cached input, output, per million tokens in USD.
PRICES = {
    "gpt-5": ("1.25", "0.125", "10.00"),
    "gpt-5-mini": ("0.25", "0.025", "2.00"),
    "gpt-5-nano": ("0.05", "0.005", "0.40"),
    "gpt-4.1": ("2.00", "0.50", "8.00"),
    "gpt-4.1-mini": ("0.40", "0.10", "1.60"),
    "gpt-4.1-nano": ("0.10", "0.025", "0.40"),
    "gpt-4o": ("2.50", "1.25", "10.00"),
    "gpt-4o-mini": ("0.15", "0.075", "0.60"),
    "o4-mini": ("1.10", "0.275", "4.40"),
}


def seed_prices(model_class: Any) -> None:
    model_class.objects.bulk_create(
        [
            model_class(
                model=model,
                match="prefix",  # the dated snapshots too: gpt-4o-mini-2024-07-18
                input_per_million=Decimal(input_price),
                cached_input_per_million=Decimal(cached_price),
                output_per_million=Decimal(output_price),
                currency="USD",
                valid_from=VALID_FROM,
                note=NOTE,
            )
            for model, (input_price, cached_price, output_price) in PRICES.items()
        ]
        + [
            model_class(
                model="chatproxy-demo",
                match="exact",
                input_per_million=Decimal(0),
                output_per_million=Decimal(0),
                currency="USD",
                valid_from=VALID_FROM,
                note="The built-in demo model answers for free.",
            )
        ]
    )


def unseed_prices(model_class: Any) -> None:
    model_class.objects.filter(
        valid_from=VALID_FROM, note__in=[NOTE, "The built-in demo model answers for free."]
    ).delete()
