/* The quarantine: freed objects stay poisoned in a FIFO bounded in bytes before their memory
 * is reused, so a use-after-free is caught as long as the object is in here. */
#include "internal.h"

static uint64_t q_bytes_of(heap_t *h, uint64_t handle)
{
    struct slab *s = &h->slabs[handle >> 24];
    return s->slot;
}

void quarantine_put(heap_t *h, uint64_t handle, uint64_t bytes)
{
    if (h->q_len == h->q_cap) {
        size_t ncap = h->q_cap ? h->q_cap * 2 : 1024;
        uint64_t *nq = malloc(ncap * sizeof *nq);
        if (!nq) {                           /* no room to remember it: reusable at once */
            out_of("host memory for the quarantine");
            emu_stop(h->uc);
            release_object(h, handle);
            return;
        }
        for (size_t i = 0; i < h->q_len; i++) nq[i] = h->q[(h->q_head + i) % h->q_cap];
        free(h->q);
        h->q = nq; h->q_cap = ncap; h->q_head = 0;
    }
    h->q[(h->q_head + h->q_len) % h->q_cap] = handle;
    h->q_len++;
    h->q_bytes += bytes;
    while (h->q_bytes > h->q_limit && h->q_len) {
        uint64_t old = h->q[h->q_head];
        h->q_head = (h->q_head + 1) % h->q_cap;
        h->q_len--;
        h->q_bytes -= q_bytes_of(h, old);
        release_object(h, old);
    }
}
