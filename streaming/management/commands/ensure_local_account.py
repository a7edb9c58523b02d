import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "On a site with no users yet, create a local staff account with a generated password and print it. "
        "Does nothing once any user exists."
    )

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")

    def handle(self, *args, username: str, **options) -> None:
        users = get_user_model().objects
        if users.exists():
            self.stdout.write("A user account exists already; log in with it (or run createsuperuser).")
            return
        password = secrets.token_urlsafe(12)
        users.create_superuser(username=username, email="", password=password)
        self.stdout.write(self.style.SUCCESS("Created a local account for this site:"))
        self.stdout.write(f"    username: {username}\n    password: {password}")
        self.stdout.write("It is printed only this once. Change it in the admin, or add users there.")
