/*
 * fault_cost: what receiving a page into guest memory costs on this host, by how that memory is mapped.
 *
 * For each way of preparing 32 MiB of anonymous memory (4 KiB pages populated, written, collapsed into huge pages,
 * huge pages, or nothing), receive one 4 KiB page in eight through a Unix socket pair (as a page channel lands
 * pages) and read it back (as the final pass's checksum does); prints microseconds per page for each step.
 * Found the numbers behind src/Ferry.Migration/Precopy/ChunkPrefaulter.cs: on the PVM host, 25-40 us per page
 * into 4 KiB-mapped memory, 4-6 us into huge pages.
 *
 *   gcc -O2 -o /tmp/fault_cost tools/fault-cost/fault_cost.c && /tmp/fault_cost
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>
#include <time.h>
#include <stdint.h>
#include <errno.h>
#define MADV_POPULATE_WRITE 23
#define MADV_COLLAPSE 25
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e6+t.tv_nsec/1e3;}
int main(){
  size_t W=2<<20, NW=16, P=4096; size_t span=NW*W+W;
  int sv[2]; socketpair(AF_UNIX,SOCK_STREAM,0,sv);
  int sz=8<<20; setsockopt(sv[0],SOL_SOCKET,SO_SNDBUF,&sz,4); setsockopt(sv[1],SOL_SOCKET,SO_RCVBUF,&sz,4);
  char *src=malloc(P); memset(src,7,P);
  const char* names[]={"4K populate","4K userwrite","THP populate","4K populate+collapse","nothing(4K)","THP fresh"};
  for(int mode=0;mode<6;mode++){
    char*m0=mmap(0,span,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE,-1,0);
    char*m=(char*)(((uintptr_t)m0+W-1)&~(W-1));
    int thp = (mode==2||mode==5);
    madvise(m,NW*W,thp?MADV_HUGEPAGE:MADV_NOHUGEPAGE);
    double a=now();
    if(mode==0||mode==3||mode==2) madvise(m,NW*W,MADV_POPULATE_WRITE);
    if(mode==1) for(size_t o=0;o<NW*W;o+=P) m[o]=0;
    if(mode==3){ madvise(m,NW*W,MADV_HUGEPAGE); int r=madvise(m,NW*W,MADV_COLLAPSE); if(r) printf("collapse err %d\n",errno);}
    double b=now();
    // scattered: 1 page in every 8
    size_t N=0; double trecv=0,tread=0; volatile uint64_t acc=0;
    for(size_t o=0;o<NW*W;o+=8*P){
      char*p=m+o; double c=now();
      write(sv[0],src,P); size_t got=0; while(got<P){ssize_t r=read(sv[1],p+got,P-got); got+=r;}
      double d=now(); uint64_t*q=(uint64_t*)p; for(int k=0;k<512;k++) acc+=q[k]; double e=now();
      trecv+=d-c; tread+=e-d; N++;
    }
    printf("%-22s prep %.1f ms (%.2f us/4K)  recv %.2f read %.2f us/page\n",names[mode],(b-a)/1000,(b-a)/(NW*W/P),trecv/N,tread/N);
    munmap(m0,span);
  }
}
