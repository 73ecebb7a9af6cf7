/* Agents: shared by ephemeral runs and session runs. */
#ifndef BLINK_AGENT_H
#define BLINK_AGENT_H

#include "internal.h"

#include "blin.h"
#include "caps.h"

/* Checks sizes, counts and KEY=VALUE shapes of run options. */
int blink_agent_check_options(const blink_run_options_t *options, blink_error_t *err);

/* Opens the agent and checks it is a regular, readable file of sane size.
 * Returns the fd (caller closes) and sets *size. */
int blink_agent_open(const char *path, uint64_t *size, blink_error_t *err);

/* The agent's path in the guest: DIR/basename when the basename is tame,
 * DIR/agent otherwise. `dir` NULL means /var/blink/agents. */
char *blink_agent_guest_path(const char *host_path, const char *dir);

/* Encodes the Exec payload that starts the agent with its arguments and
 * environment (docs/protocol.md). The caller frees the writer. */
int blink_agent_exec_payload(blin_writer_t *w, const char *guest_path,
                             const blink_run_options_t *options, blink_error_t *err);

#endif
