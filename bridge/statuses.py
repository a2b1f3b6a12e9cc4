"""The catalogue of numbered statuses mailed back to senders.

Codes 100-115 keep Allmysms' numbers and French wording (Mail2SMS manual); the bridge's
own statuses start at 120 and are documented in the README.
"""

from __future__ import annotations

import re
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
        return self.code not in NOT_ERRORS


#: Statuses that report something that went well, or that only tell.
NOT_ERRORS = frozenset({100, 101, 129, 131, 132})

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
        # After the send: delivery reports and SMS replies (two-way), mailed in the mail's thread.
        Status(128, "SMS non distribué au {number} ({reason})", "SMS not delivered to {number} ({reason})"),
        Status(129, "SMS distribué au {number}", "SMS delivered to {number}"),
        Status(
            130,
            "Le {number} a répondu STOP : il ne recevra plus de SMS",
            "{number} replied STOP: it will get no more SMS",
        ),
        Status(
            131,
            "Le {number} a répondu {word} : il peut de nouveau recevoir des SMS",
            "{number} replied {word}: it may get SMS again",
        ),
        Status(132, "Réponse par SMS du {number}", "SMS reply from {number}"),
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


# --- the rest of a status mail in the account's language ---------------------------------

_LABELS = {
    "details": {"en": "Details: ", "fr": "Détails : "},
    "received": {"en": "Received:", "fr": "Reçu :"},
}

#: English notes and warnings written by the checks, and their French wording. Applied in
#: order to the whole text; what no pattern knows (a provider's own words) stays as it is.
_FRENCH: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), french)
    for pattern, french in (
        (r"(\d+) parts needed, (\d+) allowed \((\d+) characters (GSM-7|UCS-2)\)",
         r"\1 SMS nécessaires, \2 autorisés (\3 caractères \4)"),
        (r"the subject must start with login@apiKey", "l'objet doit commencer par login@apiKey"),
        (r"the login cannot contain spaces", "le login ne peut pas contenir d'espace"),
        (r"the numbers are missing after login@apiKey\|", "les numéros manquent après login@apiKey|"),
        (r"option ('.*?') is not name=value", r"l'option \1 n'est pas de la forme nom=valeur"),
        (r"unknown option ('.*?')", r"option inconnue \1"),
        (r"option ('.*?') given twice", r"option \1 donnée deux fois"),
        (r"lc= must be 0 or 1", "lc= doit valoir 0 ou 1"),
        (r"type= must be marketing or transactional", "type= doit valoir marketing ou transactional"),
        (r"no number given", "aucun numéro indiqué"),
        (r"^(\d+) numbers$", r"\1 numéros"),
        (r"\(expected YYYY-MM-DD hh:ii:ss\)", "(format attendu : AAAA-MM-JJ hh:mm:ss)"),
        (r"(date=.*?) does not exist", r"\1 n'existe pas"),
        (r"(date=.*?) is too far ahead", r"\1 est trop loin dans le futur"),
        (r"\(empty\)", "(vide)"),
        (r"\(not a phone number\)", "(pas un numéro de téléphone)"),
        (r"\(not a mobile number\)", "(pas un numéro de mobile)"),
        (r"\(not a valid number\)", "(numéro invalide)"),
        (r"country (\w+) not allowed", r"pays \1 non autorisé"),
        (r"opted out \(STOP\)", "désinscrit (STOP)"),
        (r"opted out of sender (\S+)", r"désinscrit de l'expéditeur \1"),
        (r"at most (\d+) SMS per hour to one number", r"au plus \1 SMS par heure vers un même numéro"),
        (r"at most (\d+) SMS per day for this account", r"au plus \1 SMS par jour pour ce compte"),
        (r"at most (\d+) credits per day for this account", r"au plus \1 crédits par jour pour ce compte"),
        (r"custom sender ('.*?') not used towards French numbers: the text must end with "
         r"'STOP au 36xxx' \(space or line break before it\)",
         r"expéditeur personnalisé \1 non utilisé vers les numéros français : le texte doit "
         r"finir par « STOP au 36xxx » (précédé d'une espace ou d'un retour à la ligne)"),
        (r"('.*?') added at the end \(marketing SMS to France\)",
         r"\1 ajouté à la fin (SMS marketing vers la France)"),
        (r"no provider can send it: ", "aucun fournisseur ne peut l'envoyer : "),
        (r"not delivered \(reconciled\)", "non distribué (confirmé par le fournisseur)"),
        (r"^Warning$", "Attention"),
        (r"^Subject$", "Objet"),
        (r"^Numbers?$", "Numéros"),
        (r"^Parts$", "SMS"),
    )
)


def label(name: str, language: str = "fr") -> str:
    """A fixed piece of a status mail (``details``, ``received``) in ``language``."""
    wording = _LABELS[name]
    return wording.get(language, wording["fr"])


def localise(text: str, language: str = "fr") -> str:
    """``text`` (a note or warning the checks wrote in English) in ``language``.

    Status mails must read in one language: ``9 parts needed, 8 allowed`` becomes
    ``9 SMS nécessaires, 8 autorisés`` for a French account. English is returned as is.
    """
    if language == "en":
        return text
    for pattern, french in _FRENCH:
        text = pattern.sub(french, text)
    return text
