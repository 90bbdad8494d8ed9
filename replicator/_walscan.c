/* The copy loop's per-frame work in one C call: WAL frames -> segment records.
 *
 * Semantics are those of walscan.scan_py (the reference, and the fallback when this module
 * was not built); tests/test_walscan.py holds both to the same bytes. Page hashes are still
 * computed by the hash function passed in (xxhash's xxh3), so the database checksum is the
 * same whichever implementation ran. Python-level work per frame cost ~15 us; here it is
 * one hash call and a memcpy.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FRAME_HEADER 24
#define REC_SIZE 32 /* txid u64, time_ns u64, db_size u32, db_checksum u64, n_pages u32 */

static inline uint32_t be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void put64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); } /* little-endian hosts */
static inline void put32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }

typedef struct {
    uint32_t pgno;
    uint32_t idx;
} PageRef;

static int cmp_ref(const void *a, const void *b) {
    const PageRef *x = a, *y = b;
    if (x->pgno != y->pgno) return x->pgno < y->pgno ? -1 : 1;
    return x->idx < y->idx ? -1 : (x->idx > y->idx);
}

/* The DbChecksum being updated: its hashes array is held as a buffer between callbacks. */
typedef struct {
    PyObject *ck;
    Py_buffer hb;
    int held;
    uint64_t value;
} Checksum;

static int ck_acquire(Checksum *c) {
    PyObject *arr = PyObject_GetAttrString(c->ck, "hashes");
    if (!arr) return -1;
    int rc = PyObject_GetBuffer(arr, &c->hb, PyBUF_WRITABLE | PyBUF_FORMAT);
    Py_DECREF(arr);
    if (rc < 0) return -1;
    c->held = 1;
    if (c->hb.itemsize != 8) {
        PyErr_SetString(PyExc_TypeError, "checksum hashes must be 64-bit");
        return -1;
    }
    PyObject *v = PyObject_GetAttrString(c->ck, "value");
    if (!v) return -1;
    c->value = PyLong_AsUnsignedLongLong(v);
    Py_DECREF(v);
    return PyErr_Occurred() ? -1 : 0;
}

static int ck_store(Checksum *c) {
    PyObject *v = PyLong_FromUnsignedLongLong(c->value);
    if (!v) return -1;
    int rc = PyObject_SetAttrString(c->ck, "value", v);
    Py_DECREF(v);
    return rc;
}

static void ck_release(Checksum *c) {
    if (c->held) {
        PyBuffer_Release(&c->hb);
        c->held = 0;
    }
}

/* Resize the checksum to n pages through its own Python method (rare: the database grew or
 * shrank), so zero-page hashes and the XOR bookkeeping stay in one place. */
static int ck_resize(Checksum *c, uint32_t n) {
    if (ck_store(c) < 0) return -1;
    ck_release(c);
    PyObject *r = PyObject_CallMethod(c->ck, "resize", "I", n);
    if (!r) return -1;
    Py_DECREF(r);
    return ck_acquire(c);
}

static inline Py_ssize_t ck_len(Checksum *c) { return c->hb.len / 8; }

static PyObject *hash_page(PyObject *hashfn, PyObject *kwnames, const unsigned char *page, Py_ssize_t ps,
                           uint32_t pgno, uint64_t *out) {
    PyObject *mv = PyMemoryView_FromMemory((char *)page, ps, PyBUF_READ);
    if (!mv) return NULL;
    PyObject *seed = PyLong_FromUnsignedLong(pgno);
    if (!seed) {
        Py_DECREF(mv);
        return NULL;
    }
    PyObject *argv[2] = {mv, seed};
    PyObject *r = PyObject_Vectorcall(hashfn, argv, 1, kwnames);
    Py_DECREF(mv);
    Py_DECREF(seed);
    if (!r) return NULL;
    *out = PyLong_AsUnsignedLongLong(r);
    Py_DECREF(r);
    if (PyErr_Occurred()) return NULL;
    return Py_None; /* borrowed marker of success */
}

static PyObject *scan(PyObject *self, PyObject *args) {
    Py_buffer data;
    Py_ssize_t n, ps;
    unsigned int salt1, salt2;
    unsigned long long txid, time_ns;
    PyObject *ck_obj, *hashfn;
    if (!PyArg_ParseTuple(args, "y*nnIIKOOK", &data, &n, &ps, &salt1, &salt2, &txid, &ck_obj, &hashfn, &time_ns))
        return NULL;
    const Py_ssize_t fsz = FRAME_HEADER + ps;
    const unsigned char *d = data.buf;
    PyObject *result = NULL, *body = NULL, *ends = NULL, *sizes = NULL, *cks = NULL, *changed = NULL;
    PyObject *kwnames = NULL;
    PageRef *refs = NULL;
    Checksum c = {ck_obj, {0}, 0, 0};

    if (n < 0 || data.len < n * fsz) {
        PyErr_SetString(PyExc_ValueError, "buffer shorter than n frames");
        goto done;
    }
    /* Pass 1, before anything changes: salts, the last commit, sizes to allocate. */
    Py_ssize_t last = -1, n_tx = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        const unsigned char *h = d + i * fsz;
        if (be32(h + 8) != salt1 || be32(h + 12) != salt2) {
            result = Py_BuildValue("(nnII)", i, (Py_ssize_t)0, 0u, 0u);
            goto done;
        }
        if (be32(h + 4)) {
            last = i;
            n_tx++;
        }
    }
    Py_ssize_t frames = last + 1;
    body = PyBytes_FromStringAndSize(NULL, frames * (ps + 4) + n_tx * REC_SIZE);
    ends = PyBytes_FromStringAndSize(NULL, n_tx * 8);
    sizes = PyBytes_FromStringAndSize(NULL, n_tx * 4);
    cks = PyBytes_FromStringAndSize(NULL, n_tx * 8);
    changed = PyBytes_FromStringAndSize(NULL, frames * 4);
    kwnames = Py_BuildValue("(s)", "seed");
    refs = PyMem_Malloc(sizeof(PageRef) * (frames > 0 ? frames : 1));
    if (!body || !ends || !sizes || !cks || !changed || !kwnames || !refs) goto done;
    if (ck_acquire(&c) < 0) goto done;

    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(body);
    unsigned char *o_ends = (unsigned char *)PyBytes_AS_STRING(ends);
    unsigned char *o_sizes = (unsigned char *)PyBytes_AS_STRING(sizes);
    unsigned char *o_cks = (unsigned char *)PyBytes_AS_STRING(cks);
    unsigned char *o_changed = (unsigned char *)PyBytes_AS_STRING(changed);
    Py_ssize_t pos = 0, n_changed = 0, t = 0, first = 0;
    for (Py_ssize_t i = 0; i < frames; i++) {
        uint32_t db_size = be32(d + i * fsz + 4);
        if (!db_size) continue;
        /* One transaction: frames first..i; the newest frame of each page wins. */
        Py_ssize_t k = 0;
        for (Py_ssize_t j = first; j <= i; j++) {
            refs[k].pgno = be32(d + j * fsz);
            refs[k].idx = (uint32_t)j;
            k++;
        }
        if (k > 1) {
            qsort(refs, k, sizeof(PageRef), cmp_ref);
            Py_ssize_t u = 0;
            for (Py_ssize_t j = 0; j < k; j++) {
                if (u && refs[u - 1].pgno == refs[j].pgno)
                    refs[u - 1] = refs[j];
                else
                    refs[u++] = refs[j];
            }
            k = u;
        }
        if ((Py_ssize_t)db_size > ck_len(&c) && ck_resize(&c, db_size) < 0) goto done;
        uint64_t *hashes = (uint64_t *)c.hb.buf;
        unsigned char *rec = out + pos;
        pos += REC_SIZE;
        uint32_t kept = 0;
        for (Py_ssize_t j = 0; j < k; j++) {
            uint32_t pgno = refs[j].pgno;
            put32(o_changed + 4 * n_changed++, pgno);
            if (pgno > db_size || pgno == 0) continue;
            const unsigned char *page = d + (Py_ssize_t)refs[j].idx * fsz + FRAME_HEADER;
            uint64_t h;
            if (!hash_page(hashfn, kwnames, page, ps, pgno, &h)) goto done;
            c.value ^= hashes[pgno - 1] ^ h;
            hashes[pgno - 1] = h;
            put32(out + pos, pgno);
            memcpy(out + pos + 4, page, ps);
            pos += 4 + ps;
            kept++;
        }
        if ((Py_ssize_t)db_size < ck_len(&c) && ck_resize(&c, db_size) < 0) goto done;
        txid++;
        put64(rec, txid);
        put64(rec + 8, time_ns);
        put32(rec + 16, db_size);
        put64(rec + 20, c.value);
        put32(rec + 28, kept);
        put64(o_ends + 8 * t, (uint64_t)pos);
        put32(o_sizes + 4 * t, db_size);
        put64(o_cks + 8 * t, c.value);
        t++;
        first = i + 1;
    }
    if (ck_store(&c) < 0) goto done;
    if (_PyBytes_Resize(&body, pos) < 0 || _PyBytes_Resize(&changed, n_changed * 4) < 0) goto done;
    uint32_t c1 = 0, c2 = 0;
    if (last >= 0) {
        c1 = be32(d + last * fsz + 16);
        c2 = be32(d + last * fsz + 20);
    }
    result = Py_BuildValue("(nnIIOOOOO)", (Py_ssize_t)-1, frames, c1, c2, body, ends, sizes, cks, changed);
done:
    ck_release(&c);
    PyBuffer_Release(&data);
    PyMem_Free(refs);
    Py_XDECREF(kwnames);
    Py_XDECREF(body);
    Py_XDECREF(ends);
    Py_XDECREF(sizes);
    Py_XDECREF(cks);
    Py_XDECREF(changed);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS,
     "scan(data, n, page_size, salt1, salt2, txid, checksum, hashfn, time_ns) -> see walscan.scan_py"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_walscan", NULL, -1, methods};

PyMODINIT_FUNC PyInit__walscan(void) {
    const uint16_t probe = 1;
    if (*(const unsigned char *)&probe != 1) { /* segment records are little-endian */
        PyErr_SetString(PyExc_ImportError, "_walscan needs a little-endian host");
        return NULL;
    }
    return PyModule_Create(&module);
}
