/* Helpers shared by the C interop peers (sysv_peer.c, posix_peer.c).
 *
 * A peer prints "ready", then reads one command per stdin line and answers with one
 * line on stdout. Bytes travel as lowercase hex, "-" standing for no bytes. A failing
 * call prints its errno text on stderr and exits 2; a malformed command exits 3.
 */
#ifndef AIOIPC_TEST_PEER_H
#define AIOIPC_TEST_PEER_H

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Noreturn void fail(const char *what)
{
    fprintf(stderr, "%s: %s\n", what, strerror(errno));
    exit(2);
}

static _Noreturn void bad(const char *what, const char *got)
{
    fprintf(stderr, "bad command: %s (%s)\n", what, got ? got : "missing");
    exit(3);
}

/* Print one answer line and flush it, so the test sees it at once. */
static void reply(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (vprintf(fmt, ap) < 0 || putchar('\n') == EOF || fflush(stdout) == EOF)
        fail("stdout");
    va_end(ap);
}

/* The next word of the command line being parsed (never NULL). */
static char *word(char **rest)
{
    char *w = strtok_r(NULL, " ", rest);
    if (w == NULL)
        bad("too few arguments", NULL);
    return w;
}

static long number(const char *s, int base)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, base);
    if (errno != 0 || *s == '\0' || *end != '\0')
        bad("not a number", s);
    return v;
}

static int nibble(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    bad("not lowercase hex", NULL);
}

/* Decode hex ("-" = empty) into a new buffer; store its length in *len. */
static unsigned char *unhex(const char *s, size_t *len)
{
    size_t n = strcmp(s, "-") == 0 ? 0 : strlen(s);
    if (n % 2 != 0)
        bad("odd hex length", s);
    unsigned char *out = malloc(n / 2 + 1);
    if (out == NULL)
        fail("malloc");
    for (size_t i = 0; i < n / 2; i++)
        out[i] = (unsigned char)(nibble(s[2 * i]) << 4 | nibble(s[2 * i + 1]));
    *len = n / 2;
    return out;
}

/* Hex of n bytes ("-" if none), in a new string. */
static char *tohex(const unsigned char *p, size_t n)
{
    char *out = malloc(2 * n + 2);
    if (out == NULL)
        fail("malloc");
    if (n == 0)
        strcpy(out, "-");
    for (size_t i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", p[i]);
    return out;
}

/* Read one line (without its newline) into *line; 0 at end of input. */
static int next_line(char **line, size_t *cap)
{
    errno = 0;
    ssize_t n = getline(line, cap, stdin);
    if (n < 0) {
        if (errno != 0)
            fail("stdin");
        return 0;
    }
    if (n > 0 && (*line)[n - 1] == '\n')
        (*line)[n - 1] = '\0';
    return 1;
}

#endif
