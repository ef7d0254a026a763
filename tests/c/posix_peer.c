/* A POSIX IPC peer for tests/test_interop_c.py: plain mq_send/mq_receive and
 * sem_open/sem_post/sem_wait, no aioipc.
 *
 * Protocol (see peer.h): prints "ready", then one answer line per command. It holds one
 * message queue and up to four semaphores (by slot number) at a time.
 *
 *   mqcreate NAME MAXMSG MSGSIZE MODE -> attr MAXMSG MSGSIZE CURMSGS  O_CREAT|O_EXCL, octal
 *   mqopen NAME                 -> attr MAXMSG MSGSIZE CURMSGS   an existing queue
 *   mqattr                      -> attr MAXMSG MSGSIZE CURMSGS
 *   mqsend PRIO HEX             -> sent LEN
 *   mqreceive                   -> msg PRIO LEN HEX
 *   mqclose                     -> closed
 *   mqunlink NAME               -> unlinked
 *   semcreate NAME VALUE MODE   -> sem SLOT                      O_CREAT|O_EXCL, octal
 *   semopen NAME                -> sem SLOT                      an existing semaphore
 *   sempost SLOT                -> posted
 *   semwait SLOT                -> acquired
 *   semtrywait SLOT             -> acquired | busy
 *   semvalue SLOT               -> value N
 *   pong TAKE GIVE ROUNDS       -> done ROUNDS                   per round: wait TAKE, post GIVE
 *   semclose SLOT               -> closed
 *   semunlink NAME              -> unlinked
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <mqueue.h>
#include <semaphore.h>

#include "peer.h"

#define SLOTS 4

static mqd_t mq = (mqd_t)-1;
static sem_t *sems[SLOTS];

static void reply_attr(void)
{
    struct mq_attr attr;
    if (mq_getattr(mq, &attr) < 0)
        fail("mq_getattr");
    reply("attr %ld %ld %ld", attr.mq_maxmsg, attr.mq_msgsize, attr.mq_curmsgs);
}

static void set_mq(mqd_t q)
{
    if (q == (mqd_t)-1)
        fail("mq_open");
    if (mq != (mqd_t)-1)
        bad("a queue is open already", NULL);
    mq = q;
    reply_attr();
}

static void do_mqcreate(char **rest)
{
    const char *name = word(rest);
    struct mq_attr attr = {0};
    attr.mq_maxmsg = number(word(rest), 10);
    attr.mq_msgsize = number(word(rest), 10);
    mode_t mode = (mode_t)number(word(rest), 8);
    set_mq(mq_open(name, O_RDWR | O_CREAT | O_EXCL, mode, &attr));
}

static void do_mqsend(char **rest)
{
    unsigned int prio = (unsigned int)number(word(rest), 10);
    size_t len;
    unsigned char *data = unhex(word(rest), &len);
    if (mq_send(mq, (const char *)data, len, prio) < 0)
        fail("mq_send");
    reply("sent %zu", len);
    free(data);
}

static void do_mqreceive(void)
{
    struct mq_attr attr;
    if (mq_getattr(mq, &attr) < 0)
        fail("mq_getattr");
    char *buf = malloc((size_t)attr.mq_msgsize);
    if (buf == NULL)
        fail("malloc");
    unsigned int prio;
    ssize_t n = mq_receive(mq, buf, (size_t)attr.mq_msgsize, &prio);
    if (n < 0)
        fail("mq_receive");
    char *hex = tohex((unsigned char *)buf, (size_t)n);
    reply("msg %u %zd %s", prio, n, hex);
    free(hex);
    free(buf);
}

static void add_sem(sem_t *s)
{
    if (s == SEM_FAILED)
        fail("sem_open");
    for (int i = 0; i < SLOTS; i++) {
        if (sems[i] == NULL) {
            sems[i] = s;
            reply("sem %d", i);
            return;
        }
    }
    bad("no free semaphore slot", NULL);
}

static sem_t *slot(char **rest)
{
    const char *w = word(rest);
    long i = number(w, 10);
    if (i < 0 || i >= SLOTS || sems[i] == NULL)
        bad("no semaphore in slot", w);
    return sems[i];
}

static void do_pong(char **rest)
{
    sem_t *take = slot(rest);
    sem_t *give = slot(rest);
    long rounds = number(word(rest), 10);
    for (long i = 0; i < rounds; i++) {
        if (sem_wait(take) < 0)
            fail("sem_wait");
        if (sem_post(give) < 0)
            fail("sem_post");
    }
    reply("done %ld", rounds);
}

static void command(char *line)
{
    char *rest;
    char *cmd = strtok_r(line, " ", &rest);
    if (cmd == NULL)
        bad("empty line", NULL);
    if (strcmp(cmd, "mqcreate") == 0) {
        do_mqcreate(&rest);
    } else if (strcmp(cmd, "mqopen") == 0) {
        set_mq(mq_open(word(&rest), O_RDWR));
    } else if (strcmp(cmd, "mqattr") == 0) {
        reply_attr();
    } else if (strcmp(cmd, "mqsend") == 0) {
        do_mqsend(&rest);
    } else if (strcmp(cmd, "mqreceive") == 0) {
        do_mqreceive();
    } else if (strcmp(cmd, "mqclose") == 0) {
        if (mq_close(mq) < 0)
            fail("mq_close");
        mq = (mqd_t)-1;
        reply("closed");
    } else if (strcmp(cmd, "mqunlink") == 0) {
        if (mq_unlink(word(&rest)) < 0)
            fail("mq_unlink");
        reply("unlinked");
    } else if (strcmp(cmd, "semcreate") == 0) {
        const char *name = word(&rest);
        unsigned int value = (unsigned int)number(word(&rest), 10);
        mode_t mode = (mode_t)number(word(&rest), 8);
        add_sem(sem_open(name, O_CREAT | O_EXCL, mode, value));
    } else if (strcmp(cmd, "semopen") == 0) {
        add_sem(sem_open(word(&rest), 0));
    } else if (strcmp(cmd, "sempost") == 0) {
        if (sem_post(slot(&rest)) < 0)
            fail("sem_post");
        reply("posted");
    } else if (strcmp(cmd, "semwait") == 0) {
        if (sem_wait(slot(&rest)) < 0)
            fail("sem_wait");
        reply("acquired");
    } else if (strcmp(cmd, "semtrywait") == 0) {
        if (sem_trywait(slot(&rest)) == 0)
            reply("acquired");
        else if (errno == EAGAIN)
            reply("busy");
        else
            fail("sem_trywait");
    } else if (strcmp(cmd, "semvalue") == 0) {
        int value;
        if (sem_getvalue(slot(&rest), &value) < 0)
            fail("sem_getvalue");
        reply("value %d", value);
    } else if (strcmp(cmd, "pong") == 0) {
        do_pong(&rest);
    } else if (strcmp(cmd, "semclose") == 0) {
        const char *w = word(&rest);
        long i = number(w, 10);
        if (i < 0 || i >= SLOTS || sems[i] == NULL)
            bad("no semaphore in slot", w);
        if (sem_close(sems[i]) < 0)
            fail("sem_close");
        sems[i] = NULL;
        reply("closed");
    } else if (strcmp(cmd, "semunlink") == 0) {
        if (sem_unlink(word(&rest)) < 0)
            fail("sem_unlink");
        reply("unlinked");
    } else {
        bad("unknown command", cmd);
    }
}

int main(void)
{
    char *line = NULL;
    size_t cap = 0;
    reply("ready");
    while (next_line(&line, &cap))
        command(line);
    free(line);
    /* At end of input, close what is still open (unlinking is the test's job). */
    if (mq != (mqd_t)-1 && mq_close(mq) < 0)
        fail("mq_close");
    for (int i = 0; i < SLOTS; i++)
        if (sems[i] != NULL && sem_close(sems[i]) < 0)
            fail("sem_close");
    return 0;
}
