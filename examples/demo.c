/* emsan's bundled example: a classic off-by-one heap overflow that native runs miss. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct record {
    char name[24];
    int score;
};

__attribute__((noinline)) static struct record *make_records(int n)
{
    return calloc(n, sizeof(struct record));
}

__attribute__((noinline)) static void fill(struct record *r, int n)
{
    for (int i = 0; i <= n; i++) {          /* bug: one record too many */
        r[i].score = i * 10;
        snprintf(r[i].name, sizeof(r[i].name), "player-%d", i);
    }
}

int main(void)
{
    int n = 4;
    struct record *r = make_records(n);
    fill(r, n);
    for (int i = 0; i < n; i++)
        printf("%s %d\n", r[i].name, r[i].score);
    free(r);
    return 0;
}
