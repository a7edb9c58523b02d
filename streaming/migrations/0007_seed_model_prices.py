from django.db import migrations

from streaming.price_seeds import seed_prices, unseed_prices


def seed(apps, schema_editor):
    seed_prices(apps.get_model("streaming", "ModelPrice"))


def unseed(apps, schema_editor):
    unseed_prices(apps.get_model("streaming", "ModelPrice"))


class Migration(migrations.Migration):
    dependencies = [("streaming", "0006_prices_and_costs")]

    operations = [migrations.RunPython(seed, unseed)]
