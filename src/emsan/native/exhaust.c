/* Resource exhaustion: the first thing emsan's native state ran out of (its shadow pool, the
 * stack depot, host memory for its bookkeeping). The code that hit the limit records it, stops
 * the engine and keeps going without that piece of metadata; the session then ends the run with
 * one line and EXIT_RESOURCES instead of letting the guest meet a half-built shadow. */
#include "runtime.h"

const char *emsan_out_of;

EXPORT const char *emsan_exhausted(void) { return emsan_out_of; }
