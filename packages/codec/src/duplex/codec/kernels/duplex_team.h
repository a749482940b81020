/* The calling thread's place in its OpenMP team; a team of one when built without OpenMP. */
#ifndef DUPLEX_TEAM_H
#define DUPLEX_TEAM_H

#ifdef _OPENMP
#include <omp.h>
static inline int team_member(void) { return omp_get_thread_num(); }
static inline int team_size(void) { return omp_get_num_threads(); }
#else
static inline int team_member(void) { return 0; }
static inline int team_size(void) { return 1; }
#endif

#endif
