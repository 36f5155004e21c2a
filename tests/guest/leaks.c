/* Leak scenarios for emsan's kmemleak scan (tests/test_leaks.py), one per argv[1]. Each case
 * leaves objects reachable in exactly one way, or not at all, then exits through exit() (so
 * the scan sees the state it was left in). Allocation sites carry markers: the report's
 * first frame must be that line. Sizes differ per case so that reports can be told apart. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct node { struct node *next; char payload[24]; };

void *keep_global;                          /* a root in .bss */
void *keep_data = (void *)1;                /* a root in .data */
static volatile uintptr_t sink;
static volatile int three = 3, two = 2;     /* loop bounds the compiler cannot unroll */

__attribute__((noinline)) void *alloc_lost(size_t n)
{
    return malloc(n);                                   /* @alloc_lost */
}

__attribute__((noinline)) struct node *alloc_node(void)
{
    struct node *n = malloc(sizeof *n);                 /* @alloc_node */
    memset(n->payload, 'L', sizeof n->payload);
    return n;
}

__attribute__((noinline)) void *alloc_kept(size_t n)
{
    void *p = malloc(n);                                /* @alloc_kept */
    memset(p, 0x11, n);
    return p;
}

/* One object whose only pointer is dropped. */
static void lost_object(void)
{
    char *p = alloc_lost(40);
    strcpy(p, "leaked by lost_object");
    asm volatile("" : : "r"(p) : "memory");             /* the string is stored */
    p = NULL;
}

/* A ten-node list whose head pointer is dropped: one leak (the head), nine reachable only
 * through it. */
static void lost_list(void)
{
    struct node *head = NULL;
    for (int i = 0; i < 10; i++) {
        struct node *n = alloc_node();
        n->next = head;
        head = n;
    }
    head = NULL;
}

/* Two objects pointing at each other, nothing else pointing at them. */
static void lost_cycle(void)
{
    struct node *a = alloc_node(), *b = alloc_node();
    a->next = b;
    b->next = a;
}

/* An object pointing at itself only. */
static void self_reference(void)
{
    struct node *a = alloc_node();
    a->next = a;
}

static void from_global(void) { keep_global = alloc_kept(48); }
static void from_data(void) { keep_data = alloc_kept(56); }

/* Kept by a pointer into its middle (kmemleak: a reference). */
static void middle_pointer(void) { keep_global = (char *)alloc_kept(64) + 37; }

/* Kept only by another live object (itself kept by a global). */
static void inside_object(void)
{
    void **holder = alloc_kept(72);
    holder[3] = alloc_kept(80);
    keep_global = holder;
}

/* Kept only by main's stack frame: the pointer is live across exit() (printed after). */
static void *on_stack(void) { return alloc_kept(88); }

/* Kept only in a callee-saved register across exit(). */
__attribute__((noinline, noreturn)) static void in_register(void)
{
#if defined(__x86_64__)
    register void *p asm("rbx") = alloc_kept(96);
    asm volatile("" : "+r"(p));
    asm volatile("mov $60, %%eax\n\txor %%edi, %%edi\n\tsyscall" : : "r"(p) : "rax", "rdi", "memory");
#else
    register void *p asm("x19") = alloc_kept(96);
    asm volatile("" : "+r"(p));
    asm volatile("mov x8, #93\n\tmov x0, #0\n\tsvc #0" : : "r"(p) : "x0", "x8", "memory");
#endif
    __builtin_unreachable();
}

/* One pointer hidden by XOR (glibc's PTR_MANGLE does the same with a secret): a leak to a
 * scanner, as to LeakSanitizer. */
static void mangled(void)
{
    keep_global = (void *)((uintptr_t)alloc_lost(104) ^ 0x5a5a5a5a5a5a5a5aULL);
}

/* Many objects from one stack: one report with a count. */
static void many(void)
{
    for (int i = 0; i < 100; i++) alloc_lost(112);
}

/* Objects lost at two sites, one bigger in total. */
static void two_sites(void)
{
    for (int i = 0; i < three; i++) alloc_lost(120);
    for (int i = 0; i < two; i++) alloc_node();
}

/* Freed objects are not leaks; realloc's old object is not either. */
static void correct(void)
{
    void *a = alloc_kept(128), *b = alloc_kept(4096), *c = alloc_kept(70000);
    free(a); free(b); free(c);
    char *r = malloc(10);
    r = realloc(r, 1000);
    keep_global = r;
    void *z = malloc(0);
    free(z);
}

/* A zero-sized object kept by its address. */
static void zero_size(void) { keep_global = malloc(0); }

/* A large object (beyond the slab sizes) lost, and one kept. */
static void large(void)
{
    alloc_lost(100000);
    keep_global = alloc_kept(200000);
}

/* C++-free calloc / aligned allocations kept through a chain of globals and objects. */
static void chain(void)
{
    void **a = calloc(4, sizeof(void *));
    void **b = aligned_alloc(64, 256);
    void **c = NULL;
    posix_memalign((void **)&c, 4096, 8192);
    a[1] = b; b[2] = c; c[3] = alloc_kept(136);
    keep_global = a;
}

/* A leak made before a scan during the run, then another one: --leaks-scan-every reports the
 * first at the first scan and only the second at exit. */
static void during_run(void)
{
    alloc_lost(144);
    volatile unsigned long x = 0;
    for (unsigned long i = 0; i < 3000000; i++) x += i;
    alloc_node();
}

/* A leak made before main, by a constructor (glibc passes it main's arguments). */
__attribute__((constructor)) static void before_main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "before-main")) alloc_lost(160);
}

/* A leak, then a use-after-free: the KASAN report stops the run, and no leak scan follows. */
static void then_bug(void)
{
    lost_object();
    char *p = alloc_kept(168);
    free(p);
    sink = p[3];
}

static void *thread_fn(void *arg)
{
    (void)arg;
    alloc_lost(152);
    return NULL;
}

static void in_thread(void)
{
    pthread_t t;
    if (pthread_create(&t, NULL, thread_fn, NULL) == 0) pthread_join(t, NULL);
}

int main(int argc, char **argv)
{
    const char *c = argc > 1 ? argv[1] : "";
    void *local = NULL;
    if (!strcmp(c, "lost")) lost_object();
    else if (!strcmp(c, "list")) lost_list();
    else if (!strcmp(c, "cycle")) lost_cycle();
    else if (!strcmp(c, "self")) self_reference();
    else if (!strcmp(c, "global")) from_global();
    else if (!strcmp(c, "data")) from_data();
    else if (!strcmp(c, "middle")) middle_pointer();
    else if (!strcmp(c, "inside")) inside_object();
    else if (!strcmp(c, "stack")) local = on_stack();
    else if (!strcmp(c, "register")) in_register();
    else if (!strcmp(c, "mangled")) mangled();
    else if (!strcmp(c, "many")) many();
    else if (!strcmp(c, "two-sites")) two_sites();
    else if (!strcmp(c, "correct")) correct();
    else if (!strcmp(c, "zero")) zero_size();
    else if (!strcmp(c, "large")) large();
    else if (!strcmp(c, "chain")) chain();
    else if (!strcmp(c, "during-run")) during_run();
    else if (!strcmp(c, "thread")) in_thread();
    else if (!strcmp(c, "abort")) { lost_object(); abort(); }
    else if (!strcmp(c, "before-main")) {}
    else if (!strcmp(c, "then-bug")) then_bug();
    else if (!strcmp(c, "none")) {}
    else { fprintf(stderr, "unknown case %s\n", c); return 2; }
    if (local) {
        /* exit() without returning: main's frame, and the pointer in it, stay on the stack */
        printf("%p\n", local == NULL ? NULL : (void *)1);
        fflush(stdout);
        asm volatile("" : : "r"(&local) : "memory");
        exit(0);
    }
    return 0;
}
