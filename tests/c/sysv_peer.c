/* A System V IPC peer for tests/test_interop_c.py: plain msgsnd/msgrcv/semop, no aioipc.
 *
 * Protocol (see peer.h): prints "ready", then one answer line per command.
 *
 *   ftok PATH PROJ              -> key SIGNED 0xUNSIGNED
 *   msgget KEY                  -> id QID              an existing queue
 *   msgcreate KEY MODE          -> id QID              IPC_CREAT|IPC_EXCL, MODE octal
 *   msgsnd QID TYPE HEX         -> sent LEN
 *   msgrcv QID TYPE SIZE FLAGS  -> msg TYPE LEN HEX    FLAGS: "-" or a comma list of
 *                                  | nomsg             except, noerror, nowait
 *   msgrm QID                   -> removed
 *   semget KEY                  -> id SID nsems N      an existing set
 *   semcreate KEY NSEMS MODE    -> id SID              IPC_CREAT|IPC_EXCL, MODE octal
 *   semop SID OPS FLAGS         -> done | busy         OPS: NUM:DELTA,... (one semop);
 *                                                      FLAGS: "-" or undo, nowait
 *   pong SID ROUNDS             -> done ROUNDS         per round: take sem 0, give sem 1
 *   getall SID                  -> vals V0 V1 ...
 *   setall SID V0 V1 ...        -> set
 *   semrm SID                   -> removed
 */
#define _GNU_SOURCE /* MSG_EXCEPT */
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>

#include "peer.h"

union semun {
    int val;
    struct semid_ds *buf;
    unsigned short *array;
};

struct message {
    long mtype;
    unsigned char mtext[];
};

static int has_flag(const char *flags, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = flags; (p = strstr(p, name)) != NULL; p += n)
        if ((p == flags || p[-1] == ',') && (p[n] == '\0' || p[n] == ','))
            return 1;
    return 0;
}

static void do_msgsnd(char **rest)
{
    int qid = (int)number(word(rest), 10);
    long type = number(word(rest), 10);
    size_t len;
    unsigned char *data = unhex(word(rest), &len);
    struct message *m = malloc(sizeof *m + len);
    if (m == NULL)
        fail("malloc");
    m->mtype = type;
    memcpy(m->mtext, data, len);
    if (msgsnd(qid, m, len, 0) < 0)
        fail("msgsnd");
    reply("sent %zu", len);
    free(m);
    free(data);
}

static void do_msgrcv(char **rest)
{
    int qid = (int)number(word(rest), 10);
    long type = number(word(rest), 10);
    size_t size = (size_t)number(word(rest), 10);
    const char *f = word(rest);
    int flags = (has_flag(f, "except") ? MSG_EXCEPT : 0) |
                (has_flag(f, "noerror") ? MSG_NOERROR : 0) |
                (has_flag(f, "nowait") ? IPC_NOWAIT : 0);
    struct message *m = malloc(sizeof *m + size);
    if (m == NULL)
        fail("malloc");
    ssize_t n = msgrcv(qid, m, size, type, flags);
    if (n < 0 && errno == ENOMSG) {
        reply("nomsg");
    } else {
        if (n < 0)
            fail("msgrcv");
        char *hex = tohex(m->mtext, (size_t)n);
        reply("msg %ld %zd %s", m->mtype, n, hex);
        free(hex);
    }
    free(m);
}

static int nsems_of(int sid)
{
    struct semid_ds ds;
    union semun arg = {.buf = &ds};
    if (semctl(sid, 0, IPC_STAT, arg) < 0)
        fail("semctl IPC_STAT");
    return (int)ds.sem_nsems;
}

static void do_semop(char **rest)
{
    int sid = (int)number(word(rest), 10);
    char *ops = word(rest);
    const char *f = word(rest);
    short flg = (short)((has_flag(f, "undo") ? SEM_UNDO : 0) |
                        (has_flag(f, "nowait") ? IPC_NOWAIT : 0));
    struct sembuf buf[16];
    size_t n = 0;
    char *save;
    for (char *op = strtok_r(ops, ",", &save); op != NULL; op = strtok_r(NULL, ",", &save)) {
        char *colon = strchr(op, ':');
        if (colon == NULL || n == sizeof buf / sizeof buf[0])
            bad("semop operations", op);
        *colon = '\0';
        buf[n].sem_num = (unsigned short)number(op, 10);
        buf[n].sem_op = (short)number(colon + 1, 10);
        buf[n].sem_flg = flg;
        n++;
    }
    if (semop(sid, buf, n) < 0) {
        if (errno == EAGAIN && (flg & IPC_NOWAIT)) {
            reply("busy");
            return;
        }
        fail("semop");
    }
    reply("done");
}

static void do_pong(char **rest)
{
    int sid = (int)number(word(rest), 10);
    long rounds = number(word(rest), 10);
    struct sembuf take = {.sem_num = 0, .sem_op = -1, .sem_flg = 0};
    struct sembuf give = {.sem_num = 1, .sem_op = 1, .sem_flg = 0};
    for (long i = 0; i < rounds; i++) {
        if (semop(sid, &take, 1) < 0)
            fail("semop take");
        if (semop(sid, &give, 1) < 0)
            fail("semop give");
    }
    reply("done %ld", rounds);
}

static void do_getall(char **rest)
{
    int sid = (int)number(word(rest), 10);
    int n = nsems_of(sid);
    unsigned short *vals = calloc((size_t)n, sizeof *vals);
    if (vals == NULL)
        fail("calloc");
    union semun arg = {.array = vals};
    if (semctl(sid, 0, GETALL, arg) < 0)
        fail("semctl GETALL");
    if (printf("vals") < 0)
        fail("stdout");
    for (int i = 0; i < n; i++)
        if (printf(" %hu", vals[i]) < 0)
            fail("stdout");
    reply("%s", "");
    free(vals);
}

static void do_setall(char **rest)
{
    int sid = (int)number(word(rest), 10);
    int n = nsems_of(sid);
    unsigned short *vals = calloc((size_t)n, sizeof *vals);
    if (vals == NULL)
        fail("calloc");
    for (int i = 0; i < n; i++)
        vals[i] = (unsigned short)number(word(rest), 10);
    union semun arg = {.array = vals};
    if (semctl(sid, 0, SETALL, arg) < 0)
        fail("semctl SETALL");
    reply("set");
    free(vals);
}

static void command(char *line)
{
    char *rest;
    char *cmd = strtok_r(line, " ", &rest);
    if (cmd == NULL)
        bad("empty line", NULL);
    if (strcmp(cmd, "ftok") == 0) {
        char *path = word(&rest);
        key_t key = ftok(path, (int)number(word(&rest), 10));
        if (key == -1)
            fail("ftok");
        reply("key %d 0x%08x", (int)key, (unsigned int)key);
    } else if (strcmp(cmd, "msgget") == 0) {
        int qid = msgget((key_t)number(word(&rest), 10), 0);
        if (qid < 0)
            fail("msgget");
        reply("id %d", qid);
    } else if (strcmp(cmd, "msgcreate") == 0) {
        key_t key = (key_t)number(word(&rest), 10);
        int qid = msgget(key, IPC_CREAT | IPC_EXCL | (int)number(word(&rest), 8));
        if (qid < 0)
            fail("msgget create");
        reply("id %d", qid);
    } else if (strcmp(cmd, "msgsnd") == 0) {
        do_msgsnd(&rest);
    } else if (strcmp(cmd, "msgrcv") == 0) {
        do_msgrcv(&rest);
    } else if (strcmp(cmd, "msgrm") == 0) {
        if (msgctl((int)number(word(&rest), 10), IPC_RMID, NULL) < 0)
            fail("msgctl IPC_RMID");
        reply("removed");
    } else if (strcmp(cmd, "semget") == 0) {
        int sid = semget((key_t)number(word(&rest), 10), 0, 0);
        if (sid < 0)
            fail("semget");
        reply("id %d nsems %d", sid, nsems_of(sid));
    } else if (strcmp(cmd, "semcreate") == 0) {
        key_t key = (key_t)number(word(&rest), 10);
        int nsems = (int)number(word(&rest), 10);
        int sid = semget(key, nsems, IPC_CREAT | IPC_EXCL | (int)number(word(&rest), 8));
        if (sid < 0)
            fail("semget create");
        reply("id %d", sid);
    } else if (strcmp(cmd, "semop") == 0) {
        do_semop(&rest);
    } else if (strcmp(cmd, "pong") == 0) {
        do_pong(&rest);
    } else if (strcmp(cmd, "getall") == 0) {
        do_getall(&rest);
    } else if (strcmp(cmd, "setall") == 0) {
        do_setall(&rest);
    } else if (strcmp(cmd, "semrm") == 0) {
        if (semctl((int)number(word(&rest), 10), 0, IPC_RMID) < 0)
            fail("semctl IPC_RMID");
        reply("removed");
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
    return 0;
}
