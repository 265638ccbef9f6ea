"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-23 10:51:42.414057
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    
    op.create_table('agents',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('login', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=True),
    sa.Column('role', sa.String(length=20), nullable=False),
    sa.Column('languages', sa.JSON(), nullable=False),
    sa.Column('skills', sa.JSON(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_agents')),
    sa.UniqueConstraint('login', name=op.f('uq_agents_login'))
    )
    op.create_table('blobs',
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('sha256', name=op.f('pk_blobs'))
    )
    op.create_table('counters',
    sa.Column('name', sa.String(length=40), nullable=False),
    sa.Column('value', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_counters'))
    )
    op.create_table('events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('ticket_id', sa.Integer(), nullable=True),
    sa.Column('kind', sa.String(length=40), nullable=False),
    sa.Column('actor', sa.String(length=120), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_events'))
    )
    op.create_table('organizations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('domains', sa.JSON(), nullable=False),
    sa.Column('tier', sa.String(length=40), nullable=True),
    sa.Column('notes', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_organizations')),
    sa.UniqueConstraint('name', name=op.f('uq_organizations_name'))
    )
    op.create_table('queues',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('addresses', sa.JSON(), nullable=False),
    sa.Column('settings', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_queues')),
    sa.UniqueConstraint('name', name=op.f('uq_queues_name'))
    )
    op.create_table('settings',
    sa.Column('key', sa.String(length=100), nullable=False),
    sa.Column('value', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_settings'))
    )
    op.create_table('tags',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tags')),
    sa.UniqueConstraint('name', name=op.f('uq_tags_name'))
    )
    op.create_table('agent_queues',
    sa.Column('agent_id', sa.Integer(), nullable=False),
    sa.Column('queue_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['agent_id'], ['agents.id'], name=op.f('fk_agent_queues_agent_id_agents'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['queue_id'], ['queues.id'], name=op.f('fk_agent_queues_queue_id_queues'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('agent_id', 'queue_id', name=op.f('pk_agent_queues'))
    )
    op.create_table('canned_responses',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('owner_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['owner_id'], ['agents.id'], name=op.f('fk_canned_responses_owner_id_agents'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_canned_responses')),
    sa.UniqueConstraint('name', 'owner_id', name='uq_canned_name_owner')
    )
    op.create_table('customers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('phone', sa.String(length=60), nullable=True),
    sa.Column('language', sa.String(length=10), nullable=True),
    sa.Column('timezone', sa.String(length=60), nullable=True),
    sa.Column('organization_id', sa.Integer(), nullable=True),
    sa.Column('notes', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], name=op.f('fk_customers_organization_id_organizations'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_customers')),
    sa.UniqueConstraint('email', name=op.f('uq_customers_email'))
    )
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_customers_organization_id'), ['organization_id'], unique=False)

    op.create_table('mail_accounts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('port', sa.Integer(), nullable=False),
    sa.Column('security', sa.String(length=10), nullable=False),
    sa.Column('username', sa.String(length=320), nullable=False),
    sa.Column('password_env', sa.String(length=200), nullable=True),
    sa.Column('password_command', sa.Text(), nullable=True),
    sa.Column('use_keyring', sa.Boolean(), nullable=False),
    sa.Column('oauth2_token_command', sa.Text(), nullable=True),
    sa.Column('folders', sa.JSON(), nullable=False),
    sa.Column('queue_id', sa.Integer(), nullable=True),
    sa.Column('after', sa.String(length=200), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('settings', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['queue_id'], ['queues.id'], name=op.f('fk_mail_accounts_queue_id_queues'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_mail_accounts')),
    sa.UniqueConstraint('name', name=op.f('uq_mail_accounts_name'))
    )
    op.create_table('presence',
    sa.Column('agent_id', sa.Integer(), nullable=False),
    sa.Column('session', sa.String(length=64), nullable=False),
    sa.Column('ticket_id', sa.Integer(), nullable=True),
    sa.Column('mode', sa.String(length=20), nullable=False),
    sa.Column('seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['agent_id'], ['agents.id'], name=op.f('fk_presence_agent_id_agents'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('agent_id', 'session', name=op.f('pk_presence'))
    )
    with op.batch_alter_table('presence', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_presence_ticket_id'), ['ticket_id'], unique=False)

    op.create_table('saved_views',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('query', sa.Text(), nullable=False),
    sa.Column('owner_id', sa.Integer(), nullable=True),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['owner_id'], ['agents.id'], name=op.f('fk_saved_views_owner_id_agents'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_saved_views')),
    sa.UniqueConstraint('name', 'owner_id', name='uq_view_name_owner')
    )
    op.create_table('customer_emails',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('customer_id', sa.Integer(), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], name=op.f('fk_customer_emails_customer_id_customers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_customer_emails')),
    sa.UniqueConstraint('email', name=op.f('uq_customer_emails_email'))
    )
    with op.batch_alter_table('customer_emails', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_customer_emails_customer_id'), ['customer_id'], unique=False)

    op.create_table('mail_folder_state',
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('folder', sa.String(length=500), nullable=False),
    sa.Column('uidvalidity', sa.BigInteger(), nullable=True),
    sa.Column('last_uid', sa.BigInteger(), nullable=False),
    sa.Column('highestmodseq', sa.BigInteger(), nullable=True),
    sa.Column('stopped_reason', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['account_id'], ['mail_accounts.id'], name=op.f('fk_mail_folder_state_account_id_mail_accounts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('account_id', 'folder', name=op.f('pk_mail_folder_state'))
    )
    op.create_table('mail_heartbeat',
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('last_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_success_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('failing_since', sa.DateTime(timezone=True), nullable=True),
    sa.Column('backlog', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['mail_accounts.id'], name=op.f('fk_mail_heartbeat_account_id_mail_accounts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('account_id', name=op.f('pk_mail_heartbeat'))
    )
    op.create_table('mail_seen',
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('folder', sa.String(length=500), nullable=False),
    sa.Column('uidvalidity', sa.BigInteger(), nullable=False),
    sa.Column('uid', sa.BigInteger(), nullable=False),
    sa.Column('article_id', sa.Integer(), nullable=True),
    sa.Column('quarantine_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['account_id'], ['mail_accounts.id'], name=op.f('fk_mail_seen_account_id_mail_accounts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('account_id', 'folder', 'uidvalidity', 'uid', name=op.f('pk_mail_seen'))
    )
    op.create_table('quarantine',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=True),
    sa.Column('folder', sa.String(length=500), nullable=True),
    sa.Column('uid', sa.BigInteger(), nullable=True),
    sa.Column('source', sa.String(length=500), nullable=False),
    sa.Column('raw', sa.LargeBinary(), nullable=False),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('ticket_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['mail_accounts.id'], name=op.f('fk_quarantine_account_id_mail_accounts'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_quarantine'))
    )
    op.create_table('tickets',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('number', sa.BigInteger(), nullable=False),
    sa.Column('subject', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('priority', sa.SmallInteger(), nullable=False),
    sa.Column('impact', sa.SmallInteger(), nullable=False),
    sa.Column('urgency', sa.SmallInteger(), nullable=False),
    sa.Column('priority_override_by', sa.String(length=100), nullable=True),
    sa.Column('type', sa.String(length=40), nullable=True),
    sa.Column('queue_id', sa.Integer(), nullable=True),
    sa.Column('assignee_id', sa.Integer(), nullable=True),
    sa.Column('customer_id', sa.Integer(), nullable=True),
    sa.Column('organization_id', sa.Integer(), nullable=True),
    sa.Column('language', sa.String(length=10), nullable=True),
    sa.Column('channel', sa.String(length=20), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('first_response_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('solved_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('postponed_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_customer_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('next_due_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('merged_into_id', sa.Integer(), nullable=True),
    sa.Column('linked_from_id', sa.Integer(), nullable=True),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['assignee_id'], ['agents.id'], name=op.f('fk_tickets_assignee_id_agents'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], name=op.f('fk_tickets_customer_id_customers'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['linked_from_id'], ['tickets.id'], name=op.f('fk_tickets_linked_from_id_tickets'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['merged_into_id'], ['tickets.id'], name=op.f('fk_tickets_merged_into_id_tickets'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], name=op.f('fk_tickets_organization_id_organizations'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['queue_id'], ['queues.id'], name=op.f('fk_tickets_queue_id_queues'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tickets')),
    sa.UniqueConstraint('number', name=op.f('uq_tickets_number'))
    )
    with op.batch_alter_table('tickets', schema=None) as batch_op:
        batch_op.create_index('ix_tickets_assignee_status_updated', ['assignee_id', 'status', 'updated_at', 'id'], unique=False)
        batch_op.create_index('ix_tickets_created', ['created_at', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_tickets_customer_id'), ['customer_id'], unique=False)
        batch_op.create_index('ix_tickets_next', ['status', 'priority', 'next_due_at', 'last_customer_at', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_tickets_organization_id'), ['organization_id'], unique=False)
        batch_op.create_index('ix_tickets_postponed', ['postponed_until'], unique=False)
        batch_op.create_index('ix_tickets_queue_status_updated', ['queue_id', 'status', 'updated_at', 'id'], unique=False)
        batch_op.create_index('ix_tickets_status_updated', ['status', 'updated_at', 'id'], unique=False)
        batch_op.create_index('ix_tickets_updated', ['updated_at', 'id'], unique=False)

    op.create_table('articles',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('ticket_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('author_agent_id', sa.Integer(), nullable=True),
    sa.Column('author_customer_id', sa.Integer(), nullable=True),
    sa.Column('from_addr', sa.Text(), nullable=False),
    sa.Column('to_addrs', sa.Text(), nullable=False),
    sa.Column('cc_addrs', sa.Text(), nullable=False),
    sa.Column('subject', sa.Text(), nullable=False),
    sa.Column('message_id', sa.String(length=998), nullable=True),
    sa.Column('in_reply_to', sa.Text(), nullable=True),
    sa.Column('references', sa.Text(), nullable=True),
    sa.Column('content_hash', sa.String(length=64), nullable=True),
    sa.Column('body_text', sa.Text(), nullable=False),
    sa.Column('quoted_text', sa.Text(), nullable=False),
    sa.Column('body_html', sa.Text(), nullable=True),
    sa.Column('language', sa.String(length=10), nullable=True),
    sa.Column('delivery_status', sa.String(length=20), nullable=True),
    sa.Column('delivery_error', sa.Text(), nullable=True),
    sa.Column('raw_blob', sa.String(length=64), nullable=True),
    sa.Column('meta', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['author_agent_id'], ['agents.id'], name=op.f('fk_articles_author_agent_id_agents'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['author_customer_id'], ['customers.id'], name=op.f('fk_articles_author_customer_id_customers'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['raw_blob'], ['blobs.sha256'], name=op.f('fk_articles_raw_blob_blobs')),
    sa.ForeignKeyConstraint(['ticket_id'], ['tickets.id'], name=op.f('fk_articles_ticket_id_tickets'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_articles'))
    )
    with op.batch_alter_table('articles', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_articles_content_hash'), ['content_hash'], unique=False)
        batch_op.create_index(batch_op.f('ix_articles_message_id'), ['message_id'], unique=False)
        batch_op.create_index('ix_articles_ticket_created', ['ticket_id', 'created_at', 'id'], unique=False)

    op.create_table('audit_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('ticket_id', sa.Integer(), nullable=True),
    sa.Column('actor', sa.String(length=120), nullable=False),
    sa.Column('action', sa.String(length=40), nullable=False),
    sa.Column('field', sa.String(length=60), nullable=True),
    sa.Column('old_value', sa.Text(), nullable=True),
    sa.Column('new_value', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['ticket_id'], ['tickets.id'], name=op.f('fk_audit_events_ticket_id_tickets'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_events'))
    )
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_events_ticket_id'), ['ticket_id'], unique=False)

    op.create_table('drafts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('ticket_id', sa.Integer(), nullable=False),
    sa.Column('agent_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('base_article_id', sa.Integer(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['agent_id'], ['agents.id'], name=op.f('fk_drafts_agent_id_agents'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['ticket_id'], ['tickets.id'], name=op.f('fk_drafts_ticket_id_tickets'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_drafts')),
    sa.UniqueConstraint('ticket_id', 'agent_id', 'kind', name='uq_draft_ticket_agent_kind')
    )
    op.create_table('ticket_links',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('ticket_id', sa.Integer(), nullable=False),
    sa.Column('other_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=30), nullable=False),
    sa.ForeignKeyConstraint(['other_id'], ['tickets.id'], name=op.f('fk_ticket_links_other_id_tickets'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['ticket_id'], ['tickets.id'], name=op.f('fk_ticket_links_ticket_id_tickets'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ticket_links'))
    )
    with op.batch_alter_table('ticket_links', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ticket_links_other_id'), ['other_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_ticket_links_ticket_id'), ['ticket_id'], unique=False)

    op.create_table('ticket_tags',
    sa.Column('ticket_id', sa.Integer(), nullable=False),
    sa.Column('tag_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['tag_id'], ['tags.id'], name=op.f('fk_ticket_tags_tag_id_tags'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['ticket_id'], ['tickets.id'], name=op.f('fk_ticket_tags_ticket_id_tickets'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('ticket_id', 'tag_id', name=op.f('pk_ticket_tags'))
    )
    with op.batch_alter_table('ticket_tags', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ticket_tags_tag_id'), ['tag_id'], unique=False)

    op.create_table('attachments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('article_id', sa.Integer(), nullable=False),
    sa.Column('filename', sa.String(length=255), nullable=False),
    sa.Column('mime_type', sa.String(length=255), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('inline', sa.Boolean(), nullable=False),
    sa.Column('content_id', sa.String(length=255), nullable=True),
    sa.ForeignKeyConstraint(['article_id'], ['articles.id'], name=op.f('fk_attachments_article_id_articles'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['sha256'], ['blobs.sha256'], name=op.f('fk_attachments_sha256_blobs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_attachments'))
    )
    with op.batch_alter_table('attachments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_attachments_article_id'), ['article_id'], unique=False)

    op.create_table('outbox',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('article_id', sa.Integer(), nullable=True),
    sa.Column('ticket_id', sa.Integer(), nullable=True),
    sa.Column('message_id', sa.String(length=998), nullable=False),
    sa.Column('mail_from', sa.String(length=320), nullable=False),
    sa.Column('rcpt_to', sa.JSON(), nullable=False),
    sa.Column('rcpt_to_key', sa.String(length=320), nullable=True),
    sa.Column('raw', sa.LargeBinary(), nullable=True),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['article_id'], ['articles.id'], name=op.f('fk_outbox_article_id_articles'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox')),
    sa.UniqueConstraint('message_id', name=op.f('uq_outbox_message_id'))
    )
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_outbox_article_id'), ['article_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_outbox_ticket_id'), ['ticket_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_outbox_rcpt_to_key'), ['rcpt_to_key'], unique=False)

    _create_search()
    op.execute("INSERT INTO counters (name, value) VALUES ('ticket', 1000)")


def _create_search() -> None:
    """Full-text search: FTS5 on SQLite, tsvector + GIN on PostgreSQL."""
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "CREATE VIRTUAL TABLE ticket_fts USING fts5(subject, "
            "tokenize='unicode61 remove_diacritics 2')"
        )
        op.execute(
            "CREATE VIRTUAL TABLE article_fts USING fts5(body, ticket_id UNINDEXED, "
            "tokenize='unicode61 remove_diacritics 2')"
        )
    else:
        op.execute(
            "ALTER TABLE tickets ADD COLUMN search_tsv tsvector "
            "GENERATED ALWAYS AS (to_tsvector('simple', coalesce(subject, ''))) STORED"
        )
        op.execute(
            "ALTER TABLE articles ADD COLUMN search_tsv tsvector "
            "GENERATED ALWAYS AS (to_tsvector('simple', coalesce(body_text, ''))) STORED"
        )
        op.execute("CREATE INDEX ix_tickets_search ON tickets USING gin (search_tsv)")
        op.execute("CREATE INDEX ix_articles_search ON articles USING gin (search_tsv)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TABLE IF EXISTS article_fts")
        op.execute("DROP TABLE IF EXISTS ticket_fts")
    
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outbox_ticket_id'))
        batch_op.drop_index(batch_op.f('ix_outbox_article_id'))

    op.drop_table('outbox')
    with op.batch_alter_table('attachments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_attachments_article_id'))

    op.drop_table('attachments')
    with op.batch_alter_table('ticket_tags', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ticket_tags_tag_id'))

    op.drop_table('ticket_tags')
    with op.batch_alter_table('ticket_links', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ticket_links_ticket_id'))
        batch_op.drop_index(batch_op.f('ix_ticket_links_other_id'))

    op.drop_table('ticket_links')
    op.drop_table('drafts')
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_events_ticket_id'))

    op.drop_table('audit_events')
    with op.batch_alter_table('articles', schema=None) as batch_op:
        batch_op.drop_index('ix_articles_ticket_created')
        batch_op.drop_index(batch_op.f('ix_articles_message_id'))
        batch_op.drop_index(batch_op.f('ix_articles_content_hash'))

    op.drop_table('articles')
    with op.batch_alter_table('tickets', schema=None) as batch_op:
        batch_op.drop_index('ix_tickets_updated')
        batch_op.drop_index('ix_tickets_status_updated')
        batch_op.drop_index('ix_tickets_queue_status_updated')
        batch_op.drop_index('ix_tickets_postponed')
        batch_op.drop_index(batch_op.f('ix_tickets_organization_id'))
        batch_op.drop_index('ix_tickets_next')
        batch_op.drop_index(batch_op.f('ix_tickets_customer_id'))
        batch_op.drop_index('ix_tickets_created')
        batch_op.drop_index('ix_tickets_assignee_status_updated')

    op.drop_table('tickets')
    op.drop_table('quarantine')
    op.drop_table('mail_seen')
    op.drop_table('mail_heartbeat')
    op.drop_table('mail_folder_state')
    with op.batch_alter_table('customer_emails', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_customer_emails_customer_id'))

    op.drop_table('customer_emails')
    op.drop_table('saved_views')
    with op.batch_alter_table('presence', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_presence_ticket_id'))

    op.drop_table('presence')
    op.drop_table('mail_accounts')
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_customers_organization_id'))

    op.drop_table('customers')
    op.drop_table('canned_responses')
    op.drop_table('agent_queues')
    op.drop_table('tags')
    op.drop_table('settings')
    op.drop_table('queues')
    op.drop_table('organizations')
    op.drop_table('events')
    op.drop_table('counters')
    op.drop_table('blobs')
    op.drop_table('agents')
    
