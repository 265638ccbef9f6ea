"""A realistic, multilingual demo store; bulk paths use batched Core inserts (1,000,000 tickets work)."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, func, insert, select, text

from store import search_index
from store.models import (
    Agent,
    Article,
    Customer,
    Organization,
    Queue,
    Tag,
    Ticket,
    TicketTag,
    utcnow,
)
from store.service import Service

Progress = Callable[[int, int], None]


def _table(model: type[Any]) -> Table:
    """The Core table of a model: plain executemany, not the ORM bulk path (much faster here)."""
    return cast(Table, model.__table__)


QUEUES = [
    ("Support", ["support@example.com"]),
    ("Billing", ["billing@example.com"]),
    ("IT Support", ["it@example.com"]),
    ("Baltics", ["atbalsts@example.lv", "pagalba@example.lt"]),
]

AGENTS = [
    ("anna", "Anna Bērziņa", ["lv", "en", "ru"], ["Support", "Baltics"]),
    ("omar", "Omar Haddad", ["ar", "en"], ["Support", "IT Support"]),
    ("siti", "Siti Rahman", ["ms", "en"], ["Billing", "Support"]),
    ("jonas", "Jonas Petrauskas", ["lt", "en", "ru"], ["Baltics", "IT Support"]),
]

ORGS = [
    ("Acme Corp", ["acme.com"], "vip"),
    ("Globex", ["globex.example"], None),
    ("Rīgas Ūdens", ["rigasudens.lv"], None),
    ("Syarikat Maju", ["maju.com.my"], "vip"),
    ("Vilniaus Tech", ["vtech.lt"], None),
]

# (language, subject, customer message, agent reply, customer follow-up)
THREADS: list[tuple[str, str, str, str, str]] = [
    (
        "en",
        "Printer jam on floor 3",
        "The printer on floor 3 jams on every second page. We tried reloading the paper.",
        "Thanks for the report. Could you send a photo of the paper tray?",
        "Photo attached. It still jams.",
    ),
    (
        "en",
        "Invoice shows the wrong VAT number",
        "Our invoice for October lists an old VAT number. Please correct it.",
        "I have corrected the VAT number and re-issued the invoice.",
        "Thank you, the new invoice is fine.",
    ),
    (
        "en",
        "Cannot log in after password reset",
        "After resetting my password I get 'account locked'.",
        "I unlocked the account; please try again and tell us if it works.",
        "Still locked, sorry.",
    ),
    (
        "en",
        "VPN disconnects every 10 minutes",
        "Since Monday the VPN drops every ten minutes on Wi-Fi.",
        "Which client version are you on? Please send the log file.",
        "Version 5.2, log attached.",
    ),
    (
        "lv",
        "Rēķinā nepareiza summa",
        "Labdien! Mūsu novembra rēķinā ir nepareiza summa. Lūdzu, pārbaudiet.",
        "Paldies, pārbaudīsim un atbildēsim šodien.",
        "Paldies par ātro atbildi!",
    ),
    (
        "lv",
        "Neizdodas pieslēgties e-pastam",
        "Kopš rīta nevaru pieslēgties darba e-pastam no telefona.",
        "Lūdzu, pamēģiniet izdzēst kontu un pievienot to vēlreiz.",
        "Tagad strādā, paldies.",
    ),
    (
        "ru",
        "Не работает принтер",
        "Здравствуйте! Принтер в бухгалтерии не печатает с утра.",
        "Добрый день! Мастер придёт после обеда.",
        "Спасибо, ждём.",
    ),
    (
        "ru",
        "Ошибка при оплате счёта",
        "При оплате счёта картой появляется ошибка 502.",
        "Мы исправили проблему, попробуйте ещё раз, пожалуйста.",
        "Оплата прошла, спасибо.",
    ),
    (
        "ar",
        "مشكلة في تسجيل الدخول",
        "مرحبا، لا أستطيع تسجيل الدخول إلى حسابي منذ يومين.",
        "شكرا لتواصلك معنا، قمنا بإعادة تعيين كلمة المرور.",
        "تم الحل، شكرا جزيلا.",
    ),
    (
        "ms",
        "Bil tidak diterima",
        "Selamat pagi, kami belum menerima bil untuk bulan ini. Boleh hantar semula?",
        "Terima kasih, kami telah menghantar semula bil tersebut.",
        "Sudah terima, terima kasih.",
    ),
    (
        "lt",
        "Neveikia spausdintuvas",
        "Laba diena, biuro spausdintuvas nespausdina nuo ryto.",
        "Ačiū, technikas atvyks po pietų.",
        "Ačiū, lauksime.",
    ),
    (
        "en",
        "Request: new laptop for onboarding",
        "We have a new colleague starting on the 1st and need a laptop.",
        "Noted. Which model do you prefer, 14 or 16 inch?",
        "14 inch please.",
    ),
]

FIRST = [
    "Alice",
    "Bruno",
    "Carla",
    "Dmitri",
    "Elīna",
    "Farah",
    "Gintaras",
    "Hana",
    "Ivan",
    "Jūlija",
    "Karim",
    "Laila",
    "Marta",
    "Nur",
    "Oskars",
    "Paulius",
    "Rasa",
    "Sergei",
    "Tariq",
    "Zainab",
]
LAST = [
    "Smith",
    "Ozols",
    "Ivanova",
    "Haddad",
    "Kazlauskas",
    "Rahman",
    "Kalniņa",
    "Novak",
    "Ali",
    "Lee",
]
TAGS = ["billing", "hardware", "login", "network", "vip", "onboarding", "refund", "bug"]

STATUS_WEIGHTS = [
    ("new", 6),
    ("open", 16),
    ("answered", 8),
    ("pending", 7),
    ("on-hold", 2),
    ("postponed", 2),
    ("solved", 20),
    ("closed", 39),
]

CANNED = [
    (
        "Greeting",
        "Hello {{customer.first_name}},\n\nthank you for contacting us about ticket #{{ticket.number}}.\n\n"
        "Best regards,\n{{agent.name}}",
    ),
    (
        "Need more info",
        "Hi {{customer.first_name}},\n\ncould you send us a screenshot and the exact error message?\n\n"
        "{{agent.name}}",
    ),
    (
        "Solved",
        "Hello {{customer.first_name}},\n\nwe believe this is solved now. Reply to this mail if it is not.\n\n"
        "{{agent.name}}",
    ),
    (
        "Paldies (lv)",
        "Labdien, {{customer.first_name}}!\n\nPaldies par jūsu ziņu.\n\nAr cieņu,\n{{agent.name}}",
    ),
]


async def seed_demo(
    service: Service,
    *,
    tickets: int = 300,
    me: str | None = None,
    seed: int = 42,
    progress: Progress | None = None,
    batch: int = 5000,
    now: datetime | None = None,
) -> int:
    """Fill an empty, migrated store with demo data; returns the number of tickets created."""
    rnd = random.Random(seed)
    now = now or utcnow()
    for name, addrs in QUEUES:
        await service.add_queue(name, addrs)
    for name, domains, tier in ORGS:
        await service.add_organization(name, domains, tier)
    logins = []
    for login, name, langs, queues in AGENTS:
        await service.add_agent(login, name, f"{login}@example.com", languages=langs, queues=queues)
        logins.append(login)
    if me and me not in logins:
        await service.add_agent(
            me,
            me.capitalize(),
            f"{me}@example.com",
            admin=True,
            queues=[q for q, _ in QUEUES],
            languages=["en"],
        )
        logins.append(me)
    for cname, body in CANNED:
        await service.add_canned(cname, body)
    await service.add_view("Urgent & high", "is:active priority:>=high")
    await service.add_view("VIP customers", "is:active tier:vip")
    await service.add_view("Baltic languages", "is:active lang:lv lang:lt")
    if me:
        await service.add_view("My pending", "assignee:me status:pending", owner=me)

    async with service.db.write() as s:
        agent_ids = list((await s.execute(select(Agent.id))).scalars())
        queue_ids = {q.name: q.id for q in (await s.execute(select(Queue))).scalars()}
        org_rows = list((await s.execute(select(Organization.id, Organization.domains))).all())
        for tag in TAGS:
            s.add(Tag(name=tag))
        await s.flush()
        tag_ids = list((await s.execute(select(Tag.id))).scalars())
        # customers: one per 3 tickets, at least 50, at most 200,000
        n_customers = max(50, min(200_000, tickets // 3))
        cust_rows = []
        base_cid = int(
            (await s.execute(select(func.coalesce(func.max(Customer.id), 0)))).scalar_one()
        )
        customer_org: dict[int, int | None] = {}
        customer_lang: dict[int, str] = {}
        customer_email: dict[int, str] = {}
        for i in range(n_customers):
            cid = base_cid + i + 1
            first, last = rnd.choice(FIRST), rnd.choice(LAST)
            org = rnd.choice(org_rows) if rnd.random() < 0.6 else None
            domain = (
                org[1][0] if org else rnd.choice(["gmail.com", "inbox.lv", "mail.ru", "yahoo.com"])
            )
            customer_org[cid] = org[0] if org else None
            customer_lang[cid] = rnd.choice(THREADS)[0]
            customer_email[cid] = f"{first.lower()}.{last.lower()}{i}@{domain}"
            cust_rows.append(
                {
                    "id": cid,
                    "name": f"{first} {last}",
                    "email": customer_email[cid],
                    "organization_id": org[0] if org else None,
                    "language": customer_lang[cid],
                    "notes": "",
                    "created_at": now - timedelta(days=400),
                    "phone": f"+371 2{rnd.randrange(10**6, 10**7)}",
                }
            )
        for i in range(0, len(cust_rows), batch):
            await s.execute(insert(_table(Customer)), cust_rows[i : i + batch])
        number0 = int(
            (await s.execute(text("SELECT value FROM counters WHERE name = 'ticket'"))).scalar_one()
        )
        tid0 = int((await s.execute(select(func.coalesce(func.max(Ticket.id), 0)))).scalar_one())
        aid0 = int((await s.execute(select(func.coalesce(func.max(Article.id), 0)))).scalar_one())
        await s.execute(
            text("UPDATE counters SET value = :v WHERE name = 'ticket'"), {"v": number0 + tickets}
        )

    statuses = [st for st, w in STATUS_WEIGHTS for _ in range(w)]
    by_lang: dict[str, list[tuple[str, str, str, str, str]]] = {}
    for th in THREADS:
        by_lang.setdefault(th[0], []).append(th)
    sqlite = service.db.is_sqlite
    aid = aid0
    done = 0
    for start in range(0, tickets, batch):
        t_rows, a_rows, tag_rows = [], [], []
        docs: list[search_index.TicketDocument] = []
        for i in range(start, min(tickets, start + batch)):
            tid = tid0 + i + 1
            cid = base_cid + 1 + rnd.randrange(n_customers)
            lang = customer_lang[cid] if rnd.random() < 0.8 else "en"
            th = rnd.choice(by_lang.get(lang) or THREADS)
            status = rnd.choice(statuses)
            # newer tickets are more likely to be active
            age = timedelta(minutes=rnd.randrange(5, 365 * 24 * 60))
            if status in ("new", "open", "pending", "answered", "postponed", "on-hold"):
                age = timedelta(minutes=rnd.randrange(5, 21 * 24 * 60))
            created = now - age
            n_articles = rnd.randint(2, 5)
            updated = min(now, created + timedelta(minutes=rnd.randrange(10, 3 * 24 * 60)))
            impact, urgency = rnd.choice([0, 1, 1, 1, 2]), rnd.choice([0, 1, 1, 1, 2])
            prio = [[0, 0, 1], [0, 1, 2], [1, 2, 3]][impact][urgency]
            t_rows.append(
                {
                    "id": tid,
                    "number": number0 + i + 1,
                    "subject": th[1],
                    "status": status,
                    "priority": prio,
                    "impact": impact,
                    "urgency": urgency,
                    "queue_id": queue_ids["Baltics"]
                    if lang in ("lv", "lt")
                    else rnd.choice(list(queue_ids.values())),
                    "assignee_id": rnd.choice(agent_ids)
                    if status != "new" and rnd.random() < 0.85
                    else None,
                    "customer_id": cid,
                    "organization_id": customer_org[cid],
                    "language": th[0],
                    "channel": "email",
                    "created_at": created,
                    "updated_at": updated,
                    "last_customer_at": created,
                    "first_response_at": created + timedelta(minutes=30)
                    if status != "new"
                    else None,
                    "solved_at": updated if status in ("solved", "closed") else None,
                    "closed_at": updated if status == "closed" else None,
                    "postponed_until": now + timedelta(hours=rnd.randrange(2, 96))
                    if status == "postponed"
                    else None,
                    "version": 1,
                    "priority_override_by": None,
                    "type": None,
                    "next_due_at": None,
                }
            )
            bodies = [
                ("email_in", th[2]),
                ("email_out", th[3]),
                ("email_in", th[4]),
                ("note", "Checked with the vendor; waiting for their answer."),
                ("email_out", th[3]),
            ][:n_articles]
            step = (updated - created) / max(1, n_articles)
            for k, (kind, body) in enumerate(bodies):
                aid += 1
                a_rows.append(
                    {
                        "id": aid,
                        "ticket_id": tid,
                        "kind": kind,
                        "body_text": body,
                        "subject": th[1],
                        "from_addr": customer_email[cid] if kind == "email_in" else "",
                        "to_addrs": customer_email[cid] if kind == "email_out" else "",
                        "author_agent_id": None
                        if kind == "email_in"
                        else t_rows[-1]["assignee_id"],
                        "author_customer_id": cid if kind == "email_in" else None,
                        "cc_addrs": "",
                        "quoted_text": "",
                        "language": th[0],
                        "message_id": f"demo-{tid}-{k}@example.com",
                        "created_at": created + step * k,
                        "meta": {},
                        "delivery_status": "sent" if kind == "email_out" else None,
                    }
                )
            docs.append(
                search_index.TicketDocument(
                    tid, th[1], search_index.ARTICLE_SEPARATOR.join(b for _k, b in bodies if b)
                )
            )
            if rnd.random() < 0.3:
                tag_rows.append({"ticket_id": tid, "tag_id": rnd.choice(tag_ids)})
        async with service.db.write() as s:
            await s.execute(insert(_table(Ticket)), t_rows)
            await s.execute(insert(_table(Article)), a_rows)
            if tag_rows:
                await s.execute(insert(_table(TicketTag)), tag_rows)
            await search_index.index_new_tickets(s, service.db.dialect, docs)
        done += len(t_rows)
        if progress:
            progress(done, tickets)
    async with service.db.write() as s:
        await search_index.optimize(s, service.db.dialect)
    if not sqlite:
        async with service.db.write() as s:
            for table in ("tickets", "articles", "customers"):
                await s.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"
                    )
                )
    return tickets
