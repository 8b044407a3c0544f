"""Every limit of dynstore in one place, each with the reason it is what it is.

Sections belong to the parts of the system that enforce them; relations between
limits are asserted at import so that a change that breaks one fails loudly.
"""

# --- operations (dynstore/api/operations) ---------------------------------------------
# DynamoDB's own numbers: clients and conformance tests depend on exactly these.

TABLES_PER_ACCOUNT_MAX = 2500  # DynamoDB's default per-region table quota; CreateTable beyond it -> LimitExceededException.
LIST_TABLES_LIMIT_MAX = 100  # ListTables returns at most 100 names per page (also its default page size).
LOCAL_SECONDARY_INDEXES_MAX = 5  # per table, as in DynamoDB.
GLOBAL_SECONDARY_INDEXES_MAX = 20  # per table, DynamoDB's default quota.
TAGS_PER_RESOURCE_MAX = 50  # DynamoDB (and every AWS service) allows 50 user tags per resource.
TAG_KEY_CHARS_MAX = 128  # AWS tag key length limit, in Unicode characters.
TAG_VALUE_CHARS_MAX = 256  # AWS tag value length limit, in Unicode characters.
PROVISIONED_UNITS_MAX = 40_000  # DescribeLimits' TableMax{Read,Write}CapacityUnits: more per table is refused.
ACCOUNT_PROVISIONED_UNITS_MAX = 80_000  # DescribeLimits' AccountMax{Read,Write}CapacityUnits.
THROUGHPUT_DECREASES_PER_DAY_MAX = 27  # DynamoDB: 4 decreases any time plus one per hour after the last, 27 a day.
READ_UNIT_BYTES = 4096  # one strongly consistent read unit covers 4 KB of item data.
WRITE_UNIT_BYTES = 1024  # one write unit covers 1 KB of item data.
PAGE_BYTES_MAX = 1024 * 1024  # Query and Scan stop a page once 1 MB of items was read.
BATCH_WRITE_REQUESTS_MAX = 25  # BatchWriteItem: at most 25 put/delete requests.
BATCH_GET_KEYS_MAX = 100  # BatchGetItem: at most 100 keys across all tables.
BATCH_GET_RESPONSE_BYTES_MAX = 16 * 1024 * 1024  # BatchGetItem returns at most 16 MB; the rest is UnprocessedKeys.
TTL_SCAN_INTERVAL_S = 1.0  # how often the expiry task looks for expired items (DynamoDB: within days).
TTL_PAST_MAX_S = 5 * 365 * 24 * 3600  # DynamoDB ignores TTL values more than 5 years in the past.
TTL_DELETES_PER_ROUND_MAX = 1000  # expired items deleted per table per round, so expiry never starves requests.
STORED_VALUE_BYTES_MAX = 512 * 1024  # the B-tree's value limit: an encoded item must fit in it.

assert TAGS_PER_RESOURCE_MAX > 0 and PROVISIONED_UNITS_MAX <= ACCOUNT_PROVISIONED_UNITS_MAX
assert PAGE_BYTES_MAX < BATCH_GET_RESPONSE_BYTES_MAX

# --- expressions (dynstore/api/expressions) -------------------------------------------
# DynamoDB's documented expression limits; conformance tests probe each boundary exactly.

EXPRESSION_BYTES_MAX = 4096  # any one expression string, in UTF-8 bytes; checked before parsing.
EXPRESSION_OPERATORS_MAX = 300  # comparators, AND, OR, NOT, BETWEEN, IN, + and - in one expression.
EXPRESSION_IN_OPERANDS_MAX = 100  # right-hand operands of one IN.
EXPRESSION_PATH_DEPTH_MAX = 32  # nesting levels of one document path, as for items themselves.
EXPRESSION_PLACEHOLDER_BYTES_MAX = 255  # a #name or :value placeholder, including its first character.
# Parenthesised groups and function calls nested inside each other. DynamoDB refuses deeper
# nesting through the operator limit or redundant parentheses; the bound keeps the recursive
# parser's stack small whatever the input.
EXPRESSION_NESTING_MAX = 300
EXPRESSION_CACHE_ENTRIES_MAX = 4096  # parsed expressions kept by text; a few hundred per workload is typical.
NUMBER_DIGITS_MAX = 38  # significant digits of a DynamoDB number; arithmetic results beyond it are refused.

assert EXPRESSION_IN_OPERANDS_MAX < EXPRESSION_OPERATORS_MAX < EXPRESSION_BYTES_MAX
assert EXPRESSION_NESTING_MAX <= EXPRESSION_OPERATORS_MAX

# --- write-ahead log (dynstore/storage/wal.py, native/wal.c) ---------------------------
# Passed to the C code at open, so both backends enforce the same numbers.

# A segment is preallocated whole, so running out of space shows when one is created and
# never in the middle of a record; 64 MiB is a few seconds of writes at full speed, small
# enough that drop_before frees space soon after a checkpoint.
WAL_SEGMENT_BYTES_DEFAULT = 64 * 1024 * 1024
# Small segments are allowed for tests of rolling and disk-full behaviour on tiny file systems.
WAL_SEGMENT_BYTES_MIN = 64 * 1024
# One record holds one replicated write batch: a TransactWriteItems of 100 items of 400 KB
# is about 40 MB of item data, so a record larger than this is refused rather than queued.
WAL_RECORD_PAYLOAD_BYTES_MAX = 64 * 1024 * 1024
# Bytes queued for the flusher before append() waits for it: bounds the memory of a log whose
# appenders outrun the disk, and is large enough that a full queue means the disk is saturated.
WAL_QUEUE_BYTES_MAX = 128 * 1024 * 1024
# Bytes of records returned by one call into the log while iterating: large enough that the
# per-call cost vanishes, small enough that a reader holds little memory.
WAL_READ_CHUNK_BYTES = 1024 * 1024

# A replica of a cluster's partition group preallocates segments of this size: a node holds a
# replica of every partition (32 MiB of items by default, REPLICATED_SPLIT_BYTES_DEFAULT), so a
# 64 MiB segment each would take more disk than the data. 4 MiB still holds thousands of 1 KB
# writes between segment switches, and a larger record gets a segment of its own size.
REPLICA_WAL_SEGMENT_BYTES = 4 * 1024 * 1024
assert WAL_SEGMENT_BYTES_MIN <= REPLICA_WAL_SEGMENT_BYTES <= WAL_SEGMENT_BYTES_DEFAULT
assert WAL_SEGMENT_BYTES_MIN <= WAL_SEGMENT_BYTES_DEFAULT
assert WAL_RECORD_PAYLOAD_BYTES_MAX < WAL_QUEUE_BYTES_MAX  # one record always fits in an empty queue

# --- B+tree (dynstore/storage/btree.py, native/btree.pyx) ------------------------------
# Fixed by the file format except the cache bounds; both backends read these numbers.

# 16 KiB pages: a key may be 4 KiB, and every page must hold at least three cells so that a
# split always yields two pages that fit (a cell is at most a third of a page). With 8 KiB
# pages a 4 KiB key would leave room for one cell. 16 KiB is also a whole number of NVMe
# blocks, so a page is one read, and keeps the tree three levels deep for 10^8 small items.
BTREE_PAGE_BYTES = 16 * 1024
# Keys are DynamoDB storage keys: hash ‖ partition key (2048 B) ‖ sort key (1024 B) plus
# encoding overhead stays well under 4 KiB.
BTREE_KEY_BYTES_MAX = 4096
BTREE_VALUE_BYTES_MAX = STORED_VALUE_BYTES_MAX  # one encoded item (400 KB) plus its metadata.
# The buffer pool pins one root-to-leaf path (plus a split's new pages) during an operation;
# 64 frames keep that possible for any height the format allows, with room to cache.
BTREE_CACHE_BYTES_MIN = 64 * BTREE_PAGE_BYTES
BTREE_CACHE_BYTES_DEFAULT = 64 * 1024 * 1024  # one partition's working set on a shared node.
# Deepest tree the code descends: the root splits only when full (three cells or more), so
# every level multiplies the reachable pages by three at least and 2^32 pages need ~21 levels.
BTREE_HEIGHT_MAX = 40
# Items returned by one native call while a cursor walks: amortises the call and the
# re-descent from the root that makes cursors safe against writes between batches.
BTREE_SCAN_BATCH_ITEMS = 256

assert BTREE_KEY_BYTES_MAX * 3 < BTREE_PAGE_BYTES  # three largest internal cells fit a page
assert BTREE_CACHE_BYTES_MIN // BTREE_PAGE_BYTES > BTREE_HEIGHT_MAX + 2  # a pinned path plus a split
assert BTREE_CACHE_BYTES_MIN <= BTREE_CACHE_BYTES_DEFAULT

# --- HTTP front end (dynstore/api/server.py, sigv4.py, model.py) ----------------------
# What one client may cost a node: every byte, connection and second it can hold is bounded.

HTTP_BODY_BYTES_MAX = 16 * 1024 * 1024  # DynamoDB's own request limit (RequestEntityTooLargeException, 413).
# Request line plus headers. A SigV4-signed boto3 request carries about 1 KB of headers; 16 KiB
# is what common load balancers allow and keeps a flood of header bytes from growing memory.
HTTP_HEADER_BYTES_MAX = 16 * 1024
HTTP_HEADERS_MAX = 100  # header fields per request; real clients send about ten.
# Open client connections per server process. Each costs a socket, a parser and a few KB;
# past the limit a connection gets one 503 (which SDKs retry) and is closed.
HTTP_CONNECTIONS_MAX = 4096
# Requests read ahead on one pipelined connection before reading pauses until responses drain,
# so a client that sends without reading cannot queue unbounded work.
HTTP_PIPELINED_REQUESTS_MAX = 16
HTTP_IDLE_TIMEOUT_S = 60.0  # keep-alive connection with no request in progress (AWS load balancers: 60 s).
HTTP_HEADER_TIMEOUT_S = 10.0  # first byte of a request to the end of its headers (slow-header clients).
# End of headers to end of body: 16 MiB at 1 MB/s fits, a client that stops sending mid-body does not.
HTTP_BODY_TIMEOUT_S = 30.0
# A response the client does not read: how long writing may stay blocked before the connection closes.
HTTP_SEND_TIMEOUT_S = 30.0
HTTP_SHUTDOWN_GRACE_S = 5.0  # on stop, requests already running get this long to answer.
SIGV4_CLOCK_SKEW_S = 15 * 60  # DynamoDB refuses signatures dated more than 15 minutes from its clock.
SIGV4_PRESIGNED_EXPIRES_S_MAX = 7 * 24 * 3600  # the longest X-Amz-Expires AWS accepts (one week).
# Derived signing keys kept (one per access key, day and region in use); cleared whole when full.
SIGV4_SIGNING_KEYS_CACHED_MAX = 1024
VALIDATION_ERRORS_MAX = 10  # DynamoDB lists at most 10 constraint violations in one ValidationException.
# Nested structures, lists and maps in a request body. Items may nest 32 levels (values.py gives
# DynamoDB's message); each level is two JSON levels (map, then value), plus the request's own.
REQUEST_NESTING_MAX = 2 * 32 + 8

assert HTTP_HEADER_BYTES_MAX < HTTP_BODY_BYTES_MAX
assert HTTP_HEADER_TIMEOUT_S <= HTTP_IDLE_TIMEOUT_S and HTTP_SHUTDOWN_GRACE_S < HTTP_BODY_TIMEOUT_S
assert SIGV4_CLOCK_SKEW_S < SIGV4_PRESIGNED_EXPIRES_S_MAX

# --- data model (dynstore/api/values.py, keys.py) --------------------------------------
# DynamoDB's own numbers (checked against the real service): conformance tests probe each
# boundary to the byte, so none of these may move.

ITEM_BYTES_MAX = 400 * 1024  # 409,600 accepted, 409,601 refused ("Item size has exceeded...").
ATTRIBUTE_NAME_BYTES_MAX = 65535  # UTF-8 bytes of an attribute or map key name; 65,536 is refused.
# A map or list may sit at levels 1..31 (the attribute itself is level 1), so a scalar may sit at
# level 32: 31 nested maps are accepted and 32 refused by the real service.
NESTING_LEVELS_MAX = 32
NUMBER_EXPONENT_MAX = 125  # largest power of ten of a number's leading digit: 9.99..E+125.
NUMBER_EXPONENT_MIN = -130  # smallest: 1E-130.
PARTITION_KEY_BYTES_MAX = 2048  # S: UTF-8 bytes, B: raw bytes; numbers are always small enough.
SORT_KEY_BYTES_MAX = 1024
STORAGE_KEY_HASH_BYTES = 8  # leading hash of the partition key: spreads partitions over the key space.
# keys.py writes a string or binary key component in groups of 8 bytes plus a marker byte, with
# one group more than needed so the end is marked; a number takes at most 2 + 38 + 1 bytes.
STORAGE_KEY_BYTES_MAX = (
    STORAGE_KEY_HASH_BYTES
    + 9 * (PARTITION_KEY_BYTES_MAX // 8 + 1)
    + 9 * (SORT_KEY_BYTES_MAX // 8 + 1)
)

assert STORAGE_KEY_BYTES_MAX <= BTREE_KEY_BYTES_MAX  # every DynamoDB key fits the B-tree
assert ITEM_BYTES_MAX < STORED_VALUE_BYTES_MAX
assert EXPRESSION_PATH_DEPTH_MAX == NESTING_LEVELS_MAX
assert 2 + NUMBER_DIGITS_MAX + 1 < 9 * (SORT_KEY_BYTES_MAX // 8 + 1)  # numbers never set the maximum

# --- client (dynstore/client) -----------------------------------------------------------
# What one dynstore.client process may cost itself and the server when things go wrong.

# Attempts of one request, the first included, when the server throttles or fails: botocore's
# DynamoDB default, so a dynstore.client program gives up no sooner than a boto3 one.
CLIENT_ATTEMPTS_MAX = 10
# Full-jitter backoff: attempt n waits uniform(0, min(cap, base * 2**n)). 50 ms is botocore's
# DynamoDB base; the cap keeps the wait before the tenth attempt under half a minute.
CLIENT_BACKOFF_BASE_S = 0.05
CLIENT_BACKOFF_CAP_S = 20.0
# One socket operation (connect, a send, a receive): botocore's default read timeout. A
# DynamoDB request is answered in milliseconds; this only bounds a dead server or network.
CLIENT_SOCKET_TIMEOUT_S = 60.0
# Open connections of one asyncio client: requests beyond it wait for a connection to come
# free, so a burst of tasks cannot open thousands of sockets (botocore's pool holds 10).
CLIENT_CONNECTIONS_MAX = 64
CLIENT_RECV_BYTES = 256 * 1024  # one recv(): a 1 MB Query page arrives in a few calls.
# create_table(wait=True) polls DescribeTable until ACTIVE: every 100 ms (a local table is
# ready at once, a replicated one in a second or two), for at most 10 minutes like boto3's waiter.
CLIENT_TABLE_POLL_S = 0.1
CLIENT_TABLE_WAIT_S_MAX = 600.0

assert CLIENT_BACKOFF_BASE_S < CLIENT_BACKOFF_CAP_S < CLIENT_SOCKET_TIMEOUT_S
assert CLIENT_TABLE_POLL_S < CLIENT_TABLE_WAIT_S_MAX

# --- load generator (dynstore/bench) ------------------------------------------------------
# What one `dynstore bench` run may hold; the generator must never be what a run measures.

# Latencies are recorded in microseconds from 1 µs to one minute at 3 significant digits
# (HdrHistogram): a request slower than a minute is a failure, not a latency to rank.
BENCH_LATENCY_US_MAX = 60_000_000
BENCH_LATENCY_DIGITS = 3
# Open connections of one generator process. In open loop, requests beyond them wait for one
# to come free and that wait counts in their latency; enough for 10k req/s at 25 ms each.
BENCH_CONNECTIONS_PER_WORKER_MAX = 256
# After the last scheduled send, requests still running get this long to finish; the rest
# are reported as unfinished (an overloaded target would otherwise hold the run forever).
BENCH_DRAIN_S = 10.0
# A run is at most an hour: the per-second latency windows of all processes stay a few MB.
BENCH_DURATION_S_MAX = 3600.0
BENCH_PROGRESS_S = 0.5  # how often each generator process reports its counts to the display.

assert BENCH_DRAIN_S * 1_000_000 < BENCH_LATENCY_US_MAX

# --- replication (dynstore/replication) -------------------------------------------------
# Timing of one Multi-Paxos group and the bounds on what one message or one leader may hold.

# Largest rate at which a replica's monotonic clock may run fast or slow against real time.
# Server quartz drifts about 1e-5 and NTP-disciplined clocks less; 1e-3 leaves two orders of
# magnitude for virtualised hosts whose clocks stall and catch up.
CLOCK_DRIFT_MAX = 1e-3
# A follower that heard from the leader at its local time t refuses any other ballot until its
# clock reads t + ELECTION_TIMEOUT_S, and a follower only campaigns after that long in silence.
# One second rides out a GC pause or a busy event loop without a needless election.
ELECTION_TIMEOUT_S = 1.0
# The leader sends an Accept (possibly empty) to every peer this often: a tenth of the election
# timeout lets nine in a row be lost before followers give up on it.
HEARTBEAT_INTERVAL_S = 0.1
# The leader's lease runs from the send time of an Accept that a quorum acknowledged. The
# acknowledging follower's window starts no earlier (it received the message later) and lasts at
# least ELECTION_TIMEOUT_S / (1 + drift) of real time; the lease, measured on a clock that may run
# slow, lasts at most LEASE_S / (1 - drift). Equal at LEASE_S = timeout * (1 - drift) / (1 + drift).
LEASE_S = ELECTION_TIMEOUT_S * (1 - CLOCK_DRIFT_MAX) / (1 + CLOCK_DRIFT_MAX)
# Entries in one Accept: enough to carry a burst of batched proposals in one message, few enough
# that a lagging follower's catch-up message stays a few MB with 4 KB commands.
ACCEPT_ENTRIES_MAX = 256
# Entries sent to a follower and not yet acknowledged: a window of this many keeps the pipeline
# full over a WAN-sized round trip while bounding what is resent after a loss.
INFLIGHT_ENTRIES_MAX = 4 * ACCEPT_ENTRIES_MAX
# Proposals a leader holds uncommitted before refusing more (retryable): bounds its memory and
# how much work is in doubt when it fails.
UNCOMMITTED_ENTRIES_MAX = 16 * ACCEPT_ENTRIES_MAX
# Slots a replica's recorded commit index may lag behind its own when no other record is written:
# the record costs a sync of its own then, and a replica that restarts with it behind learns the
# rest from the leader (a leader's next entries, a follower's next Accept carry it for free).
COMMIT_RECORD_LAG_MAX = 64
# Largest message frame accepted from the network; a snapshot chunk is 1 MiB of compressed data
# and an Accept of ACCEPT_ENTRIES_MAX batches fits as well.
FRAME_BYTES_MAX = 64 * 1024 * 1024

assert HEARTBEAT_INTERVAL_S * 5 <= ELECTION_TIMEOUT_S  # several heartbeats fit in one timeout
assert 0 < LEASE_S < ELECTION_TIMEOUT_S
assert ACCEPT_ENTRIES_MAX <= INFLIGHT_ENTRIES_MAX <= UNCOMMITTED_ENTRIES_MAX

# --- replication runtime (dynstore/replication/transport.py, replica.py, group_process.py) --
# The shell around the Paxos core: its clock, its links to peers and how much log it keeps.

# The core is ticked when it asks (Paxos.wake_at) and at least this often: a heartbeat, so that
# a deadline the shell missed costs one heartbeat's delay, while an idle replica wakes ten times
# a second (a node holds many replicas; a fixed fast beat was most of an idle node's work).
TICK_INTERVAL_S = HEARTBEAT_INTERVAL_S
# A new leader's opening entry, and any commit of the metadata group, is told to the followers
# holding it within this long, in the next Accept or else in one of its own, rather than at the
# next heartbeat: a node waiting to have applied a catalog change it heard of, or to know that
# its group has a leader that serves, waits as long. Under a steady stream of writes the next
# Accept tells it, and nothing more is sent.
COMMIT_TELL_S = 0.005
# Ticks fall on a grid of this step (replica.py _Ticks), so the replicas of a process wake
# together: one turn of the loop sends every group's heartbeat and their answers come back
# together, where a wake-up per replica and beat was most of an idle node's work. A deadline is
# kept at most this much late: half a heartbeat, a twentieth of an election timeout.
TICK_QUANTUM_S = HEARTBEAT_INTERVAL_S / 2
# A lost link is redialled after a backoff doubling from the minimum to the maximum: the minimum
# finds a restarted peer within a heartbeat or two, the maximum keeps a dead peer to one dial per
# quarter of an election timeout.
RECONNECT_BACKOFF_MIN_S = 0.02
RECONNECT_BACKOFF_MAX_S = ELECTION_TIMEOUT_S / 4
# A dial that neither connects nor fails in this long is abandoned and retried.
CONNECT_TIMEOUT_S = ELECTION_TIMEOUT_S / 2
# Bytes queued on one peer link before further frames are dropped (the protocol recovers as from
# a loss): a full inflight window of 1 KB entries is ~1 MB, so 64 MB only fills when the peer is
# stalled, and then memory stays bounded.
PEER_SEND_BUFFER_BYTES_MAX = 64 * 1024 * 1024
# Applied entries between checkpoints of the applied tree: each checkpoint lets the log drop what
# it covers, so the log on disk holds about this many entries plus LOG_KEEP_ENTRIES.
CHECKPOINT_ENTRIES = 10_000
# A checkpoint writes every page changed since the last one, on the event loop (about 9 ms per
# 1,250 pages here, 47 ms while the file grows). From this share of CHECKPOINT_ENTRIES on, each
# apply writes up to CHECKPOINT_WRITE_AHEAD_PAGES of them ahead (tens of microseconds), so the
# checkpoint finds few left.
CHECKPOINT_WRITE_AHEAD_FROM = 0.8
CHECKPOINT_WRITE_AHEAD_PAGES = 16
# Committed entries kept in the log below a checkpoint, so that a follower a little behind (a
# restart, a short partition) catches up from the log instead of a whole snapshot.
LOG_KEEP_ENTRIES = 2_000
# Largest request or response on the test client protocol of group_process: a 400 KB item as
# JSON, with room to spare.
CLIENT_FRAME_BYTES_MAX = 4 * 1024 * 1024
# Closing a replica cancels its background tasks; one that swallowed a cancellation is
# cancelled again after this wait, up to this many rounds, then the close fails loudly
# rather than hanging a shutdown.
TASK_CANCEL_WAIT_S = 0.5
TASK_CANCEL_ROUNDS_MAX = 10

assert TICK_QUANTUM_S < TICK_INTERVAL_S <= HEARTBEAT_INTERVAL_S
assert RECONNECT_BACKOFF_MIN_S < RECONNECT_BACKOFF_MAX_S < ELECTION_TIMEOUT_S
assert INFLIGHT_ENTRIES_MAX * 1024 < PEER_SEND_BUFFER_BYTES_MAX <= FRAME_BYTES_MAX

# --- availability canary (dynstore/canary.py) ---------------------------------------------
# Measured as DynamoDB states its availability: successful requests / requests per 5-minute
# window, and a day as the mean of its windows' availabilities.

# One probe (a write and a read) per partition per second: 288 x 300 = 86,400 probes a
# partition a day, so one failed second shows as ~0.3% in its window, at the cost of one small
# durable write per partition per second (an fdatasync each on an idle node).
CANARY_INTERVAL_S = 1.0
# A probe not answered within this long counts as failed (write and read): a durable write
# takes milliseconds, so two seconds means the partition is not serving, not that it is slow.
CANARY_PROBE_TIMEOUT_S = 2.0
CANARY_WINDOW_S = 300  # DynamoDB's SLA interval.
CANARY_WINDOWS_KEPT = 24 * 3600 // CANARY_WINDOW_S  # a day of windows per partition, ~290 small lists.

assert CANARY_PROBE_TIMEOUT_S < CANARY_WINDOW_S and CANARY_INTERVAL_S < CANARY_WINDOW_S

# --- cluster nodes and request routing (dynstore/node/, dynstore/router/cluster.py) ------------

# How often a node looks at its metadata replica for tables to open or remove. A new table's
# group needs a quorum of replicas open before it elects a leader, so this adds directly to the
# first write's latency after CreateTable; a poll of a ~256-entry tree costs microseconds.
CATALOG_RECONCILE_INTERVAL_S = 0.02
# How long a request waits for its partition to have a reachable leader (an election, a new
# table's first election, a node restarting) before it answers ServiceUnavailable: an election
# takes one to two election timeouts after the leader is missed, so four leaves room for a
# second round of it.
FORWARD_WAIT_S = 4 * ELECTION_TIMEOUT_S
# The longest wait between looks at the leader hint while no leader is known: a request is woken
# sooner by the replica seeing the leader change (a message, a hand-over); this bounds the wait
# when it sees nothing (half a heartbeat interval finds a new leader soon after its first one).
FORWARD_POLL_S = HEARTBEAT_INTERVAL_S / 2
# A forwarded request goes to the leader a node believes in; a stale hint moves it once more,
# and the metadata leader may route it on to the table's leader: three hops cover a hint gone
# stale on the way, and a loop of stale hints ends here instead of going round.
FORWARD_HOPS_MAX = 4
# A forwarded request not answered this long is reported as an InternalServerError (outcome
# unknown): it is longer than a leader takes to step down and fail its pending writes.
FORWARD_TIMEOUT_S = 10 * ELECTION_TIMEOUT_S
# A node that held a forwarded request when its group elected another leader may still answer:
# one that handed its lead over, or lost it while in touch, sends the request on to the new
# leader within a round trip or two, or a few hundred milliseconds on a loaded machine of
# many node processes. One cut off never answers, so the wait for it ends this long after the
# change is seen: two election timeouts, as long again as the election that came before.
FORWARD_MOVED_GRACE_S = 2 * ELECTION_TIMEOUT_S
# A node-addressed control call (the control plane's Load, Map and Join) not answered this long
# counts as the node not answering: each is answered from memory in microseconds, so a node
# that takes this long is stopped or cut off, and the control plane's round must go on.
CONTROL_CALL_TIMEOUT_S = 2.0
# A node process that exits is started again after a backoff doubling from the minimum to the
# maximum; one that ran longer than the reset time starts again from the minimum. The maximum
# keeps a node that crashes at start from spinning while still rejoining within seconds.
NODE_RESTART_BACKOFF_MIN_S = 0.1
NODE_RESTART_BACKOFF_MAX_S = 5.0
NODE_RESTART_RESET_S = 30.0
# How long `dynstore up --nodes N` waits for every node to serve its endpoint at start: opening
# replays each replica's log, which takes seconds for a large one.
NODE_START_TIMEOUT_S = 60.0

assert FORWARD_POLL_S < HEARTBEAT_INTERVAL_S and FORWARD_WAIT_S < FORWARD_TIMEOUT_S
assert NODE_RESTART_BACKOFF_MIN_S < NODE_RESTART_BACKOFF_MAX_S < NODE_RESTART_RESET_S

# --- partition splits (dynstore/autoadmin/splits.py, dynstore/router/local.py) -------------------

# A partition is split once its items pass this size, DynamoDB's figure: a DynamoDB partition
# holds about 10 GB. A partition is also the unit that recovers, snapshots and moves, so its size
# bounds how long a replica takes to rebuild from a snapshot (~10 GiB at disk speed: a minute or
# two); smaller ones would cost more groups and more map entries for no gain on one node.
PARTITION_SPLIT_BYTES_DEFAULT = 10 * 1024 ** 3
# In a cluster a split is a command every replica applies at the same slot, copying the upper half
# into the new group's seed: 6 ms per MiB on this machine when quiet, 15 under load
# (bench/bench_split.py: scan, statistics, bulk load, trim). The copy runs a slice at a time
# (SPLIT_SLICE_ITEMS), so the node's other partitions go on, but the partition's own later writes
# wait for it: 0.2 to 0.5 s at 32 MiB, where a 10 GiB partition would hold its writes for a minute
# or more. Until the copy runs beside the partition's writes, partitions stay this small.
REPLICATED_SPLIT_BYTES_DEFAULT = 32 * 1024 ** 2
# Replicas of each table partition, one per zone: DynamoDB's three. Two survive the loss of any
# one (a majority remains), and a fourth would add a copy of every write for no availability a
# three-zone cluster lacks.
REPLICAS = 3
# A node that has not answered the control plane for this long is replaced in the placement of
# its tables (autoadmin healing). Longer than a supervisor takes to restart a crashed node
# (under a second here, plus a few seconds of recovery), which is cheaper than copying its
# partitions elsewhere; short enough that a second failure in a group is unlikely to come first.
HEAL_AFTER_S_DEFAULT = 30.0
# A partition's leader hands the lead to another replica (to even out leaders across nodes, or
# before its own replica leaves the group) once its writes in flight are committed and the other
# holds them; it takes no new writes meanwhile (they run at the next leader), so that comes
# within a round trip or two. It looks this often, for at most this long (the other replica
# does not catch up), then takes writes again, and the control plane tries next round.
TRANSFER_POLL_S = 0.001
TRANSFER_WAIT_S = 0.5
# Leaders are evened out once a node leads this many partitions more than another node that
# holds a replica of one of them: one more would move a lead back and forth.
LEADERS_IMBALANCE_MIN = 2
# Leads and tables are evened out by request rate as well (autoadmin/balance.py): each
# partition's rate is taken over this window (a few control rounds, so one slow round is not a
# trend), and a lead or a table moves for load once a node takes this many requests a second
# more than another node it could go to, and this share of its own load (a lead move costs the
# partition a round trip without a leader, a table move a copy of the table; a smaller gap is
# noise).
LOAD_WINDOW_S = 5.0
LOAD_IMBALANCE_MIN_RATE = 50.0
LOAD_IMBALANCE_SHARE = 0.25
# Tables are evened out by count once a node holds this many more than another live node of its
# zone: one more would move a table back and forth.
TABLES_IMBALANCE_MIN = 2
# How often the split loop reads each partition's size: the statistics are in memory, so a round
# costs microseconds per partition, and a second is far shorter than a partition takes to grow
# by a noticeable part of the split size.
SPLIT_CHECK_INTERVAL_S = 1.0
# A partition of one item collection cannot be cut; it is looked at again (two scans of its items)
# only after growing by this fraction, so such a partition costs a scan per eighth of growth, not
# one per round.
SPLIT_RETRY_GROWTH = 1 / 8

# After a split the left part deletes the moved keys in batches of at most this many key bytes:
# each batch is one WAL record (under twice its key bytes: 5 bytes of framing per key of at
# least 10), well within WAL_RECORD_PAYLOAD_BYTES_MAX, and applying one holds the event loop
# for milliseconds, not for the whole half of a partition.
SPLIT_TRIM_BATCH_BYTES = 1024 * 1024
# A replica applying a split reads and sorts the partition's items this many at a time, letting
# its event loop run between slices: about 4 ms of work a slice with 1 KB items, where the whole
# partition at once held every group of the node still for 0.2 s per 32 MiB.
SPLIT_SLICE_ITEMS = 1000

assert 0 < SPLIT_RETRY_GROWTH < 1 and SPLIT_CHECK_INTERVAL_S > 0
assert SPLIT_TRIM_BATCH_BYTES * 2 < WAL_RECORD_PAYLOAD_BYTES_MAX
assert SPLIT_SLICE_ITEMS >= 1

# --- hot partitions (dynstore/autoadmin/heat.py) -------------------------------------------------

# A partition is hot on a node when it takes at least this share of the node's requests: one
# partition then decides the node's load, and its two halves could be led from two nodes.
HOT_SHARE_MIN = 0.5
# ... at this rate or more: DynamoDB's own per-partition write limit (1,000 write units a second),
# about a quarter of what one group's log takes here, so a split comes before the log saturates.
HOT_RATE_MIN_DEFAULT = 1000.0
# ... for this long: a burst is not heat, and a split costs a copy of the partition.
HOT_SUSTAIN_S_DEFAULT = 30.0
# Item keys each partition remembers of its latest requests, to cut a hot one at the median of
# its traffic: enough for a median within a few percent, small enough to ship in one reply.
HOT_KEY_SAMPLE = 512

assert 0 < HOT_SHARE_MIN <= 1 and HOT_RATE_MIN_DEFAULT > 0 and HOT_SUSTAIN_S_DEFAULT >= SPLIT_CHECK_INTERVAL_S

# --- cluster secret (dynstore/replication/handshake.py) -------------------------------------------

# Random bytes of a secret made by `dynstore up`: HMAC-SHA256's own key size, so guessing it is
# as hard as breaking the MAC.
CLUSTER_SECRET_BYTES = 32

# --- standalone router (dynstore/router/front.py) -------------------------------------------------

# How long a standalone router trusts a table's partition map before reading it again: about an
# election, so after a leader change or a split the router's first guess is wrong for about that
# long, and each wrong guess costs one hop (the node routes the request on), never an error.
ROUTER_MAP_TTL_S = ELECTION_TIMEOUT_S

# --- the cluster's status (dynstore/status.py) --------------------------------------------------

# How long `dynstore status` waits for each other node's /status before showing it as down: a
# node builds the document in milliseconds, so a node silent this long is dead, cut off or
# stalled, and an operator looking at an incident should not wait longer for the rest.
STATUS_NODE_TIMEOUT_S = 3.0

# --- a cluster node serving the DynamoDB API (dynstore/node/routing.py) -------------------------

# Largest frame between nodes forwarding DynamoDB requests: a request of HTTP_BODY_BYTES_MAX
# re-encoded, or an answer of BATCH_GET_RESPONSE_BYTES_MAX of items as JSON, where base64 makes
# binary a third larger and escaping makes control characters six times larger.
FORWARD_FRAME_BYTES_MAX = 6 * BATCH_GET_RESPONSE_BYTES_MAX + HTTP_BODY_BYTES_MAX
# A node that got an answer from another node's leader serves its next local reads (eventually
# consistent reads, DescribeTable) only once its own replica applied what that leader had, so a
# client reads its writes through the node it wrote through. A follower learns each commit from
# the leader's answer (node/routing.py ``_learn``) or else within a heartbeat; five of them cover a
# busy loop, and a replica still behind after that is cut off from its leader and answers from
# what it has, as an eventually consistent read may.
CATCH_UP_WAIT_S = 5 * HEARTBEAT_INTERVAL_S

assert FORWARD_FRAME_BYTES_MAX >= HTTP_BODY_BYTES_MAX + BATCH_GET_RESPONSE_BYTES_MAX
assert 0 < CATCH_UP_WAIT_S < ELECTION_TIMEOUT_S
