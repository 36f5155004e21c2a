/* A firmware-like blob (examples/attach_firmware.py): no OS, no libc, its own allocator over a
 * static arena, one packet handled per call. Closing a session frees it but leaves `current`
 * pointing at it, and a later key packet writes through it: a use-after-free. */
#include <stddef.h>

struct session {
    int state;
    unsigned char key[16];
};

static unsigned char arena[8192];
static size_t top;
static unsigned live;                            /* objects allocated and not freed */
static struct session *current;

__attribute__((noinline)) void *fw_alloc(size_t n)
{
    void *p = arena + top;
    top += (n + 15) & ~(size_t)15;
    if (top > sizeof arena)
        return NULL;
    live++;
    return p;
}

__attribute__((noinline)) void fw_free(void *p)
{
    if (p)                                       /* a bump allocator: only counts */
        live--;
}

int handle_packet(const unsigned char *pkt, size_t len)
{
    if (len < 1)
        return -1;
    switch (pkt[0]) {
    case 'O':                                    /* open */
        current = fw_alloc(sizeof *current);  /* @alloc */
        if (current)
            current->state = 1;
        return 0;
    case 'C':                                    /* close: `current` is left dangling */
        fw_free(current);  /* @free */
        return 0;
    case 'K':                                    /* key */
        if (current == NULL || len < 1 + sizeof current->key)
            return -1;
        for (size_t i = 0; i < sizeof current->key; i++)
            current->key[i] = pkt[1 + i];  /* @uaf */
        return current->state;
    }
    return -1;
}
