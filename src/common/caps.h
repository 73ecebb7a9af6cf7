/* Every size a peer controls is capped here, with the reason for the number.
 * Host and guest both include this file, so the two sides agree on the limits. */
#ifndef BLINK_CAPS_H
#define BLINK_CAPS_H

/* Largest BLIN payload either side accepts. Output chunks are 32 KiB and file
 * chunks 256 KiB, so 1 MiB leaves room for an exec request with a large
 * environment while keeping one frame's buffer small enough to never matter. */
#define BLINK_CAP_BLIN_PAYLOAD (1u << 20)

/* Chunk sizes the senders use; both are well under the payload cap. */
#define BLINK_CAP_OUTPUT_CHUNK (32u << 10)
#define BLINK_CAP_FILE_CHUNK (256u << 10)

/* An agent file larger than this is refused before a VM starts: agents are
 * scripts and single binaries, and the guest keeps the file on its disk. */
#define BLINK_CAP_AGENT_FILE (256ull << 20)

/* Arguments and environment entries of one exec request. */
#define BLINK_CAP_EXEC_STRINGS 4096u
#define BLINK_CAP_EXEC_STRING (64u << 10)

/* Default bytes of each stream kept in a run's result; the rest is counted and
 * dropped, and the result says it was truncated. Configurable per run. */
#define BLINK_DEFAULT_OUTPUT_CAP (16u << 20)

/* Tail of each stream kept to find the agent's last line (the JSON result
 * line), independent of the head cap above. */
#define BLINK_CAP_LAST_LINE (256u << 10)

/* One QMP message (a line of JSON) from QEMU. Replies we ask for are small;
 * anything longer is a broken or hostile monitor. */
#define BLINK_CAP_QMP_LINE (1u << 20)

/* Console (serial) output of a VM kept for error messages. */
#define BLINK_CAP_CONSOLE_TAIL (16u << 10)

/* Bytes queued towards the guest before the host stops reading new input. */
#define BLINK_CAP_SEND_QUEUE (4u << 20)

/* ---- the shim (one per running session VM) ---- */

/* Clients, executions and file transfers one shim serves at once; each
 * client has a decoder and an output queue, each execution a history. */
#define SHIM_MAX_CLIENTS 64
#define SHIM_MAX_EXECUTIONS 256
#define SHIM_MAX_TRANSFERS 64
/* Output kept per execution for reattach; older chunks are dropped first.
 * BLINK_EXEC_HISTORY (read by the shim when it starts) sets another size
 * within the bounds: every running execution may hold this much. */
#define SHIM_EXEC_BUFFER (1u << 20)
#define SHIM_EXEC_BUFFER_MIN (64u << 10)
#define SHIM_EXEC_BUFFER_MAX (64u << 20)
/* Ended executions kept (output and exit status) for clients that attach
 * late; the oldest goes first. */
#define SHIM_MAX_FINISHED 32
/* Attachments: clients following an execution they did not start. */
#define SHIM_MAX_SUBSCRIBERS 256
/* A client that does not read its output falls this far behind, then it is
 * disconnected; its executions go on and keep their buffers. */
#define SHIM_CLIENT_QUEUE_CAP (8u << 20)

/* ---- the V-Hub carrier (docs/vhub.md) ---- */

/* Guest connections one VM carries to the hub at once; each may hold up to
 * two windows of buffers on the host, so the worst case per VM is
 * 64 x 256 KiB = 16 MiB, reached only if every hub connection stalls. */
#define VHUB_MAX_CONNECTIONS 64
/* Bytes one side may send on a connection before the other acknowledges
 * them: the whole per-connection buffer on the receiving side. */
#define VHUB_WINDOW (128u << 10)
/* Largest Data frame on the carrier; also the port decoder's payload cap. */
#define VHUB_DATA_MAX (64u << 10)
/* A receiver acknowledges consumed bytes in batches of this size. */
#define VHUB_ACK_BATCH (32u << 10)
/* Frames queued towards the other side of the carrier port; input is read
 * only while the queue is under half of this. */
#define VHUB_PORT_QUEUE (1u << 20)
/* Answers the host makes itself (no hub, errors) that a guest connection
 * leaves unread before it is closed as a flood. */
#define VHUB_LOCAL_QUEUE (64u << 10)

/* ---- blink-server (HTTP) ---- */

/* A request body: the largest legitimate one is an inline agent in base64,
 * and agents beyond ~700 KiB belong on the host (`script`), not in JSON. */
#define SERVER_CAP_BODY (1u << 20)
/* Environment entries of one run request (as the CLI's --env limit). */
#define SERVER_CAP_ENV 256
/* Arguments of one spawn request: with the environment, well under the
 * guest's BLINK_CAP_EXEC_STRINGS. */
#define SERVER_CAP_ARGS 1024
/* Concurrent connections; each holds a thread (thread-per-connection). */
#define SERVER_CAP_CONNECTIONS 128
/* One WebSocket message from an attached client (stdin bytes or a JSON
 * control message): stdin goes to the guest in 32 KiB frames anyway. */
#define SERVER_CAP_WS_MESSAGE (1u << 20)
/* Output queued for one attached client before the server stops reading
 * the execution for it; the shim then queues what comes up to its client
 * cap and drops the connection, and the client reattaches with ?after=. */
#define SERVER_CAP_WS_QUEUE (4u << 20)
/* Output of a running job kept for GET /api/runs/{id}/logs, newest first. */
#define SERVER_CAP_RUN_LOG (1u << 20)
/* Longest long-poll of GET /api/runs/{id}?wait=S, in seconds. */
#define SERVER_CAP_WAIT_SEC 60
/* Largest run timeout a client may ask for: one day. */
#define SERVER_CAP_TIMEOUT_SEC 86400

/* ---- guest side ---- */

/* Concurrent executions one VM serves; each holds up to three fds. */
#define GUEST_MAX_EXECUTIONS 128

/* Concurrent file transfers; the host sends files one after another. */
#define GUEST_MAX_TRANSFERS 16

/* Stdin bytes kept for executions that are not reading their input. The
 * protocol has no flow control towards the guest, so this is where a host
 * that outruns a slow reader is refused (ENOBUFS) instead of growing memory:
 * 1 MiB per execution is sixteen pipe buffers, and the total keeps a flood
 * across many executions small next to the agents' memory. */
#define GUEST_STDIN_QUEUE_MAX (1u << 20)
#define GUEST_STDIN_QUEUE_TOTAL_MAX (16u << 20)

#endif
