"""The catalogue of numbered statuses mailed back to senders.

Codes 100-115 keep Allmysms' numbers and French wording (Mail2SMS manual); the bridge's
own statuses start at 120 and are documented in the README.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Status:
    """One numbered status: its code and its text in French and English."""

    code: int
    fr: str
    en: str

    @property
    def is_error(self) -> bool:
        """True for statuses that mean the request (or part of it) was refused."""
        return self.code not in (100, 101)


CATALOGUE: dict[int, Status] = {
    s.code: s
    for s in [
        Status(100, "Message envoyé", "Message sent"),
        Status(101, "Message programmé", "Message scheduled"),
        Status(
            102,
            "Problème de connexion - Aucun compte ne correspond aux clientcode et apiKey spécifiés",
            "Connection problem - no account matches the given login and API key",
        ),
        Status(
            104,
            "Crédit insuffisant pour traiter cet envoi. A utiliser: {used} Crédits, "
            "Disponibles: {available} Crédits. Veuillez re-créditer votre compte",
            "Insufficient credit for this request. Needed: {used} credits, "
            "available: {available} credits. Please top up your account",
        ),
        Status(105, "Flux vide (aucun paramètre dans l'objet)", "Empty request (no parameters in the subject)"),
        Status(
            109,
            "Flux invalide ou incomplet (objet mal formé)",
            "Invalid or incomplete request (malformed subject)",
        ),
        Status(110, "Message non défini (vide)", "Message not defined (empty)"),
        Status(
            111,
            "Le message dépasse le nombre de caractères autorisé",
            "The message is longer than allowed",
        ),
        Status(
            113,
            "Certains numéros de téléphone sont invalides (les numéros valides ont été traités)",
            "Some phone numbers are invalid (the valid ones were processed)",
        ),
        Status(
            114,
            "Aucun numéro de téléphone valide dans le flux. Veuillez-vous référer à la "
            "documentation en ligne pour connaitre les formats valides.",
            "No valid phone number in the request. See the documentation for valid formats.",
        ),
        Status(
            115,
            "Flux invalide ou date mal formatée",
            "Invalid request or badly formatted date",
        ),
        # The bridge's own statuses (documented in README.md).
        Status(
            120,
            "Trop de destinataires (maximum {maximum} par envoi)",
            "Too many recipients (at most {maximum} per request)",
        ),
        Status(
            121,
            "Expéditeur non autorisé pour ce compte",
            "Sender address not allowed for this account",
        ),
        Status(
            122,
            "Échec de l'envoi par le fournisseur SMS",
            "The SMS provider could not deliver the message",
        ),
        Status(
            123,
            "Expéditeur (from=) invalide : doit commencer par une lettre, 3 à 11 caractères "
            "alphanumériques ou espaces",
            "Invalid sender (from=): must start with a letter, 3 to 11 letters, digits or spaces",
        ),
        Status(
            124,
            "SMS marketing vers la France sans mention STOP (le texte doit finir par "
            "« STOP au 36xxx »)",
            "Marketing SMS to France without an opt-out mention (the text must end with "
            "'STOP au 36xxx')",
        ),
        Status(
            125,
            "Numéro(s) désinscrit(s) (STOP) : non envoyé(s), non facturé(s)",
            "Number(s) opted out (STOP): not sent, not charged",
        ),
        Status(
            126,
            "Pays de destination non autorisé pour ce compte",
            "Destination country not allowed for this account",
        ),
        Status(
            127,
            "Limite d'envoi atteinte (par numéro, par jour ou budget quotidien)",
            "Sending limit reached (per number, per day or daily spend)",
        ),
    ]
}


def status_text(code: int, language: str = "fr", **details: object) -> str:
    """The text of status ``code`` in ``language`` with ``details`` filled in.

    A missing detail is shown as ``?`` rather than raising: a reply must always go out.
    """
    status = CATALOGUE[code]
    template = status.en if language == "en" else status.fr
    return template.format_map(_Missing(details))


class _Missing(dict):
    def __missing__(self, key: str) -> str:
        return "?"
