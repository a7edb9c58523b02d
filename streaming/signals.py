"""Keep cached per-user limits in step with the overrides staff edit in the admin."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db.models import Model
from django.db.models.signals import m2m_changed, post_delete, post_save
from django.dispatch import receiver

from .limits import forget_limits
from .models import UsageLimit


@receiver([post_save, post_delete], sender=UsageLimit)
def usage_limit_changed(sender: type, instance: UsageLimit, **kwargs: object) -> None:
    if instance.user_id:
        forget_limits([instance.user_id])
    if instance.group_id:
        forget_limits(get_user_model().objects.filter(groups=instance.group_id).values_list("pk", flat=True))


@receiver(m2m_changed, sender=get_user_model().groups.through)
def group_membership_changed(
    sender: type, instance: Model, action: str, reverse: bool, pk_set: set[int] | None, **kwargs: object
) -> None:
    if not reverse:  # user.groups changed: the instance is the user
        if action.startswith("post_"):
            forget_limits([instance.pk])
    elif action in ("post_add", "post_remove"):  # group.user_set changed: pk_set holds the users
        forget_limits(pk_set or ())
    elif action == "pre_clear":  # the members are still there to be named
        assert isinstance(instance, Group)
        forget_limits(instance.user_set.values_list("pk", flat=True))
