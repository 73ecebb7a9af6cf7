/* A minimal unit-test harness: CHECK records a failure and goes on; each
 * test binary reports its counts and exits non-zero on any failure. */
#ifndef BLINK_UNIT_H
#define BLINK_UNIT_H

#include <stdio.h>

extern int unit_checks;
extern int unit_failures;

#define CHECK(cond)                                                                             \
    do {                                                                                       \
        unit_checks++;                                                                         \
        if (!(cond)) {                                                                         \
            unit_failures++;                                                                   \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);          \
        }                                                                                      \
    } while (0)

/* Each test file defines this; unit.c's main calls it. */
void unit_run(void);

#endif
