"""Vocabulary of the fleet corpus: services (each with a look-alike twin), people, incident causes,
decisions, findings, settings, code changes. Questions are written as an agent would ask them, in other
words than the events use."""

from __future__ import annotations

# (name, host prefix, what it is, code package); the second of each pair is a look-alike of the first.
SERVICE_PAIRS = [
    (("payments-api", "pay", "card payments API", "payments"),
     ("payments-apis", "pays", "legacy batch payments gateway", "payments_batch")),
    (("ledger-svc", "ldg", "double-entry ledger", "ledger"),
     ("ledger-sync", "lsync", "ledger export to the warehouse", "ledger_sync")),
    (("auth-gateway", "auth", "login and token gateway", "auth"),
     ("auth-gw", "agw", "internal service-to-service auth proxy", "authproxy")),
    (("search-indexer", "srch", "product search indexer", "search"),
     ("search-indexer-v2", "srch2", "Elasticsearch 8 rewrite of the indexer", "search_v2")),
    (("notify-worker", "ntf", "email and SMS notification worker", "notify"),
     ("notify-workers", "ntfs", "push notification fan-out pool", "push")),
    (("billing-cron", "bill", "nightly invoicing job", "billing"),
     ("billing-crons", "bills", "dunning reminder jobs", "dunning")),
    (("checkout-web", "chk", "checkout frontend", "checkout"),
     ("checkout-webhooks", "chkw", "checkout webhook receiver", "webhooks")),
    (("fraud-scorer", "frd", "fraud scoring model server", "fraud"),
     ("fraud-scorers", "frds", "offline fraud backfill", "fraud_backfill")),
    (("inventory-api", "inv", "stock levels API", "inventory"),
     ("inventory-apis", "invs", "supplier inventory feeds", "supplier_feeds")),
    (("media-resizer", "med", "image resizing service", "media"),
     ("media-resize", "medr", "video thumbnail job", "thumbs")),
    (("geo-lookup", "geo", "address and geo-IP lookup", "geo"),
     ("geo-lookups", "geos", "bulk geocoding batch", "geocode_batch")),
    (("report-builder", "rpt", "PDF report builder", "reports"),
     ("report-builders", "rpts", "scheduled report fan-out", "report_jobs")),
]  # fmt: skip

PEOPLE = [
    "Priya Raman", "Tomás Ortega", "Wen Zhao", "Fatima Haddad", "Lukas Brandt", "Aisha Mensah", "Kenji Mori",
    "Sofia Rossi", "Daniel Okafor", "Marta Nowak", "Hugo Lefebvre", "Ingrid Solberg", "Ravi Iyer",
    "Chloe Dubois", "Mateo Silva", "Nora Lindqvist", "Omar Farouk", "Grace Kim", "Pavel Novak", "Leah Cohen",
]  # fmt: skip
REGIONS = ["eu-west-1", "us-east-2", "ap-southeast-1", "eu-central-1"]
DEPENDENCIES = ["card-vault", "Stripe", "Postgres", "Kafka", "S3", "Redis", "Twilio", "SendGrid", "Elasticsearch"]
TABLES = [("orders", "customer_id"), ("ledger_entries", "account_id"), ("sessions", "user_id"),
          ("invoices", "due_date"), ("events", "created_at"), ("payouts", "merchant_id")]  # fmt: skip
ENDPOINTS = ["POST /v1/charges", "GET /v2/accounts/{id}", "POST /oauth/token", "PUT /v1/items/{sku}",
             "GET /healthz", "POST /v1/refunds", "GET /v1/search"]  # fmt: skip

# (cause, fix): {dep} {a} {b} {table} {col} {flag} are filled in.
CAUSES = [
    ("the {dep} client reuses TLS connections the server already closed after {a}s idle",
     "reconnect on stale sockets and a keep-alive of {b}s"),
    ("a missing index on {table}.{col} makes every lookup scan about {a}k rows",
     "a partial index on {table}({col}), built concurrently"),
    ("the retry loop has no backoff, so one slow {dep} call turns into {a} retries",
     "exponential backoff with jitter, at most {b} attempts"),
    ("clock skew of {a}s between the nodes and the token issuer expires JWTs early",
     "chrony on the node pool and {b}s of leeway when validating tokens"),
    ("the worker pool ({a} threads) is exhausted by blocking DNS lookups",
     "the async resolver and a pool of {b} threads"),
    ("a migration renamed {table}.{col} but the {dep} consumer still reads the old column",
     "writing both columns until the consumer is upgraded"),
    ("an unbounded LRU in front of {dep} grows by {a} MB an hour until the pod is OOM-killed",
     "a cap of {b}k entries on the cache"),
    ("{dep} started answering 429 above {a} requests per second",
     "a client-side rate limiter at {b} rps"),
    ("debug logging filled the data disk ({a} GB) on the primary node",
     "log rotation at {b} GB and debug logs off in production"),
    ("two consumers race and acknowledge the same message twice",
     "an idempotency key on {table}.{col} with a unique constraint"),
    ("an expired intermediate certificate in the {dep} trust bundle",
     "a rotated bundle and an expiry alert {b} days ahead"),
    ("the feature flag {flag} was rolled out to 100% instead of {a}%",
     "the flag back at {a}% and a guard in the rollout script"),
]  # fmt: skip
FLAGS = ["new-pricing-engine", "async-capture", "smart-retries", "v2-tokenizer", "bulk-export", "lazy-ledger"]

INCIDENT_DETECT = [
    "Alert: {code} on {svc} ({host}), {n} errors in {m} minutes, mostly on {endpoint}. Paging {oncall}.",
    "{svc} is throwing {code} on {host} since {hh}:{mm} UTC; {n} failed requests so far. Investigating.",
    "Seeing a burst of {code} from {svc} in {region}: {n} failures on {endpoint} within {m} min.",
]  # fmt: skip
INCIDENT_CAUSE = [
    "Root cause of {code} on {svc}: {cause}.",
    "Found why {svc} fails with {code}: {cause}.",
    "{code} explained: {cause}. Repro steps are in the incident doc.",
]  # fmt: skip
INCIDENT_FIX = [
    "Fix for {code} is in PR #{pr} ({path}): {fix}. Tracked in {ticket}.",
    "Merged PR #{pr}, which resolves {code} on {svc} with {fix} ({ticket}).",
    "{ticket}: shipped {fix} in PR #{pr} to stop the {code} failures.",
]  # fmt: skip
INCIDENT_AGAIN = [
    "{code} again on {svc}: {n} occurrences in the last hour, retries succeeded.",
    "Another {code} blip on {host}, {n} requests affected, no page.",
    "{svc} logged {n} x {code} overnight; within the error budget.",
]  # fmt: skip
INCIDENT_QUIET = "No {code} on {svc} for 24 hours after the fix went out; closing {ticket}."
Q_INCIDENT_CAUSE = [
    "What's the root cause of {code}?", "Why do we keep getting {code}?", "{code}: do we know what triggers it?",
    "What is behind the {code} errors on {svc}?",
]  # fmt: skip
Q_INCIDENT_BOTH = [
    "What broke with {code} and how was it fixed?", "Give me the cause and the fix of the {code} incident.",
    "{code} on {svc}: what went wrong and what did we change?",
]  # fmt: skip
Q_INCIDENT_PR = ["Which PR fixed {code}?", "Which pull request addressed the {code} failures?"]

DEPLOY = [
    "Deployed {svc} {ver} to prod ({region}) on {date}: canary {pct}% for {m} min, then full rollout. {ticket}, "
    "approved by {person}.",
    "{date}: {svc} {ver} is live in production ({region}), signed off by {person}; {ticket}.",
    "Rolled out {svc} {ver} to all prod pods on {date} after a {m} minute canary. Approver: {person} ({ticket}).",
]  # fmt: skip
ROLLBACK = "{date}: rolled {svc} back from {new} to {old} in prod; {code} spiked right after the deploy."
STAGING = "Deployed {svc} {ver}-rc{n} to staging for QA."
Q_DEPLOY_LATEST = [
    "Which {svc} version is running in production right now?", "What's the newest {svc} build live in prod?",
    "What version of {svc} is currently deployed?",
]  # fmt: skip
Q_DEPLOY_FIRST = ["Which {svc} version did this project first ship to production?",
                  "What was the earliest {svc} release we put in prod?"]  # fmt: skip
Q_DEPLOY_WHO = ["Who signed off on {svc} {ver}?", "Who approved the {ver} release of {svc}?",
                "When did {svc} {ver} go out to prod?"]  # fmt: skip
Q_DEPLOY_DAY = ["What did we release to production on {date}?", "Which prod deploys happened on {date}?"]
Q_ROLLBACK = [
    "Why was {svc} {new} rolled back, and to which version?",
    "What happened with the {new} release of {svc}?",
]

# (name, ways an agent asks about it, values, unit)
SETTINGS = [
    ("DB connection pool size", ["database pool size", "max number of Postgres connections"], (20, 50, 80), ""),
    ("request timeout", ["timeout", "time limit per request"], (30, 45, 60), " s"),
    ("rate limit", ["throttle", "cap on requests per minute"], (1200, 2000, 3000), " rpm"),
    ("replica count", ["number of pods", "instance count"], (3, 6, 9), ""),
    ("cache TTL", ["cache expiry", "lifetime of cached entries"], (300, 900, 1800), " s"),
    ("worker concurrency", ["number of parallel workers", "concurrency"], (8, 16, 24), ""),
    ("JVM heap", ["heap size", "memory given to the JVM"], (2, 4, 6), " GB"),
    ("batch size", ["rows per batch", "batch size"], (500, 2000, 5000), ""),
]  # fmt: skip
SETTING_FIRST = "{svc}: {setting} is {value} (the chart default)."
SETTING_CHANGE = [
    "Raised the {setting} of {svc} from {old} to {value}: {reason}.",
    "{svc} {setting} bumped {old} -> {value} because {reason}.",
]  # fmt: skip
SETTING_REASONS = [
    "saturation alarms at the daily peak", "p99 latency was over the SLO", "the batch import started timing out",
    "traffic doubled after the marketing launch", "we kept hitting the limit during reconciliation",
    "the load test showed headroom was gone",
]  # fmt: skip
Q_SETTING_NOW = ["What's the {para} for {svc} these days?", "What is {svc}'s {para} set to now?"]
Q_SETTING_HISTORY = ["How has the {para} of {svc} changed over time?", "Walk me through the {para} changes on {svc}."]
Q_SETTING_WHY = ["Why did we raise the {para} of {svc} to {value}?", "What made us bump {svc}'s {para} to {value}?"]

# (topic, decision, discussion beforehand, follow-up when done, questions, the follow-up question)
DECISIONS = [
    ("session storage",
     "move session storage from Memcached to Redis Cluster, since Memcached evictions were logging users out",
     "Should sessions stay in Memcached? Evictions keep logging people out; Redis Cluster is the other option.",
     "Session store cut over to Redis Cluster at 02:00; no sessions lost.",
     ["What are we replacing Memcached with for sessions?", "Where will login sessions be kept from now on?"],
     "What did we decide about session storage, and is it done?"),
    ("API versioning",
     "version the public API in the URL path (/v2/...) rather than in an Accept header",
     "Open question: API versioning via URL path or via media-type headers?",
     "The router now serves /v1 and /v2 side by side; clients pin the path.",
     ["How will we version the public API?", "Path or header for API versions: what did we pick?"],
     "How is the public API versioned now, and has it been rolled out?"),
    ("the order event broker",
     "use Kafka rather than RabbitMQ for order events, because we need replay",
     "Kafka or RabbitMQ for the order event stream? Replay matters to the data team.",
     "Order events now flow through Kafka topic orders.v1 with 7 days of retention.",
     ["Which message broker carries order events?", "Why did we go with Kafka?"],
     "What broker did we choose for order events and how is it configured?"),
    ("feature flags",
     "self-host Unleash for feature flags instead of paying for LaunchDarkly",
     "Feature flags: LaunchDarkly quote came in high; could we run something ourselves?",
     "Unleash is up on the platform cluster; 14 flags migrated from the old config file.",
     ["What do we use for feature flags?", "Did we stay with LaunchDarkly?"],
     "What's our feature flag tool and how far is the migration?"),
    ("schema migrations",
     "run schema migrations as a separate job before a rollout, never at application start",
     "Migrations at app boot have bitten us twice; worth moving them out of startup?",
     "The deploy pipeline has a migrate step before the rollout now; app start no longer migrates.",
     ["When do database migrations run?", "Do services still migrate the schema on boot?"],
     "What's the rule for schema migrations and is the pipeline updated?"),
    ("tracing",
     "send traces to Tempo with OpenTelemetry and keep Prometheus for metrics",
     "Tracing backend: Jaeger, Tempo, or a vendor? Metrics stay where they are either way.",
     "OpenTelemetry SDK added to five services; traces visible in Tempo.",
     ["Where do our traces go?", "Which tracing stack did we settle on?"],
     "What did we choose for tracing and how many services send traces?"),
    ("secrets",
     "keep secrets in Vault and remove every .env file from the repositories",
     "Secrets are still in .env files in two repos. Vault, or the cloud secret manager?",
     "All services read secrets from Vault; the .env files are deleted from git history.",
     ["Where should secrets live?", "Are .env files still allowed?"],
     "What's the secrets policy and has the cleanup happened?"),
    ("release days",
     "release on Tuesdays and Thursdays only, with no production deploys on Fridays",
     "Deploy cadence: people keep shipping Friday evenings. Do we want release days?",
     "The pipeline now blocks production deploys on Fridays; an override needs two approvals.",
     ["Can I deploy to prod on a Friday?", "What are our release days?"],
     "What's the release schedule and how is it enforced?"),
    ("mobile login",
     "use OAuth2 PKCE for the mobile app and retire the implicit flow",
     "The mobile login still uses the implicit grant; security review flagged it.",
     "Mobile 5.2 ships with PKCE; implicit grant disabled on the auth server.",
     ["How should the mobile app log users in?", "Is the implicit grant still supported?"],
     "What login flow did we pick for mobile and has it shipped?"),
    ("the CDN",
     "serve static assets from CloudFront with immutable caching for a year",
     "Static assets: CloudFront or Fastly, and how long can we cache hashed files?",
     "CloudFront distribution live; hashed assets carry max-age=31536000, immutable.",
     ["Which CDN serves our static files?", "How long are static assets cached?"],
     "What CDN setup did we agree on and is it live?"),
    ("retries",
     "cap retries with a global retry budget of 10% of requests per service",
     "Retry storms again. Per-call retry limits or a budget per service?",
     "Retry budget middleware merged in the shared client; budgets visible on the dashboard.",
     ["How do we keep retries from piling up?", "What's the retry policy across services?"],
     "What did we decide about retries and is it implemented?"),
    ("logging of personal data",
     "write structured JSON logs with personal data hashed at the source",
     "Logs contain raw e-mail addresses. Mask in the pipeline or at the source?",
     "The logging library hashes email, phone and IBAN fields before they leave the process.",
     ["How are personal details handled in logs?", "What log format do we use?"],
     "What's the logging policy for personal data and is it enforced?"),
]  # fmt: skip
DECISION = [
    "Decision (with {person}): {text}.",
    "Agreed with {person} to {text}.",
    "{person} and I settled it: we {text}.",
]  # fmt: skip
Q_DECISION_PERSON = "What did {person} decide about {topic}?"

# (finding with {a} {b} {c}, questions)
FINDINGS = [
    ("Benchmarked PgBouncer in transaction mode against session mode: p99 went from {a}0 ms to {b}0 ms at {c}00 rps.",
     ["How much did transaction pooling help tail latency?", "What did the connection pooler benchmark show?"]),
    ("Stripe idempotency keys expire after 24 hours, so a retry a day later creates a second charge.",
     ["How long is an idempotency key valid at our card processor?", "Can a late retry double-charge a customer?"]),
    ("Consumer lag on the orders topic peaks at {a}k messages around 09:00 UTC while the batch import runs.",
     ["When is the event backlog at its worst?", "What causes the morning lag on order events?"]),
    ("pgvector HNSW with m=16 and ef_search=40 gave recall {a}% at {b} ms per query on our catalog.",
     ["What recall does approximate vector search give us?", "How did the HNSW index perform?"]),
    ("Twilio delivers {a}% of SMS within 10 seconds in Brazil, but only {b}% in India.",
     ["How quickly do text messages arrive in different countries?", "Where is SMS delivery slow?"]),
    ("Our Postgres IOPS hit the gp3 baseline of 3000 every night during the invoicing run.",
     ["Why is the database slow at night?", "Are we limited by disk throughput?"]),
    ("Cold starts of the image function take {a}00 ms on arm64 versus {b}00 ms on x86.",
     ["Which architecture starts faster for serverless image work?", "How slow are cold starts?"]),
    ("{a}% of checkout abandonments happen on the address form, mostly on mobile Safari.",
     ["Where do shoppers give up during checkout?", "Which step loses the most customers?"]),
    ("Elasticsearch reindex of the catalog takes {a} minutes with 6 shards and {b} with 12.",
     ["How long does a full search reindex take?", "Does adding shards speed up reindexing?"]),
    ("Gzip on API responses saved {a}% bandwidth with brotli saving another {b}%.",
     ["How much bandwidth does compression save?", "Is brotli worth it over gzip?"]),
    ("Spot instances were reclaimed {a} times last month; the batch jobs lost {b} hours in total.",
     ["How reliable are the cheap preemptible machines for batch?", "How much time did reclaimed nodes cost us?"]),
    ("The SendGrid bounce rate rose to {a}.{b}% after we changed the sender domain.",
     ["Did the new sender domain hurt e-mail deliverability?", "Why are more emails bouncing?"]),
]  # fmt: skip

OWNER = [
    "{person} owns {svc}; API or schema changes need their sign-off.",
    "Ownership: {svc} belongs to {person}'s team, ask them before touching its schema.",
]  # fmt: skip
Q_OWNER = ["Who do I ask before changing the schema of the {desc}?", "Who's responsible for the {desc}?"]
Q_OWNED_BY = ["What is {person} responsible for?", "Which services does {person} own?"]
ONCALL = "On-call rotation, week {week}: {p1} is primary, {p2} secondary."
Q_ONCALL_NOW = ["Who's the primary on-call at the moment?", "Who should I page right now?"]
Q_ONCALL_AT = "Who was the primary on-call when {code} first fired?"

# (path with {pkg}, what changed, how an agent names the change)
CHANGES = [
    ("src/{pkg}/reconcile.py", "split reconcile() into three passes and removed the global lock", "reconcile refactor"),
    ("src/{pkg}/retry.py", "retries now back off exponentially and stop after five attempts", "retry rework"),
    ("migrations/0042_add_{pkg}_index.sql", "adds the missing index on the hot lookup column", "index migration"),
    ("deploy/helm/{pkg}/values.yaml", "raises memory limits to 1Gi and requests to 512Mi", "memory limits change"),
    ("src/{pkg}/handlers/webhook.py", "verifies webhook signatures with HMAC-SHA256", "webhook signature check"),
    ("tests/test_{pkg}_rounding.py", "adds property tests for currency rounding", "rounding tests"),
    ("src/{pkg}/clients/http.py", "shares one connection pool across requests", "HTTP client pooling"),
    ("Dockerfile.{pkg}", "multi-stage build; the image shrank from 1.2 GB to 180 MB", "smaller container image"),
    ("src/{pkg}/cache.py", "replaces the hand-written LRU with cachetools TTLCache", "cache rewrite"),
    ("src/{pkg}/auth/jwt.py", "checks the audience claim and rejects tokens without one", "JWT audience check"),
]  # fmt: skip
CHANGE = ["{path}: {change} (PR #{pr}).", "Opened PR #{pr} touching {path}; it {change}."]
REVIEWS = [
    "approved, but asked for a test covering negative balances", "changes requested: build the index CONCURRENTLY",
    "approved after the raw card number was removed from a log line", "blocked until the load test numbers are in",
    "approved; suggested splitting the commit", "changes requested: missing timeout on the outbound call",
]  # fmt: skip
REVIEW = "Review of PR #{pr}: {verdict}."
Q_CHANGE_PATH = ["What was changed in {path}?", "What does the recent edit to {path} do?"]
Q_CHANGE_REVIEW = ["What did the {topic} do and what did the reviewer say?",
                   "Summarise the {topic}: the change and its review."]  # fmt: skip
Q_REVIEW = ["Did PR #{pr} pass review?", "What was the review verdict on PR #{pr}?"]

# (preference with {user}, question)
PREFERENCES = [
    ("{user} prefers a rollback over a hotfix when prod breaks during EU business hours.",
     "If production breaks in the afternoon, should I hotfix or revert?"),
    ("{user} wants the weekly summary on Monday mornings, at most ten bullet points.",
     "When and how should the weekly status report be sent?"),
    ("{user} does not want third-party analytics scripts on the checkout pages.",
     "Can I add a tracking pixel to the payment page?"),
    ("{user} asks to be consulted before any change that adds more than $500 a month to the cloud bill.",
     "Do I need approval before spinning up a bigger database?"),
    ("{user} likes design docs in the repo under docs/adr, one file per decision.",
     "Where should I write up an architecture proposal?"),
    ("{user} wants every incident postmortem published within five working days.",
     "How soon after an outage is the writeup due?"),
]  # fmt: skip
